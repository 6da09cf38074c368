package hostnet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultIfName is the interface a namespace gets when AttachSpec.IfName is "".
const DefaultIfName = "ethwe0"

// maxIfNameLen is IFNAMSIZ minus the terminating NUL.
const maxIfNameLen = 15

// ContainerLinkRoutes are routed out of the container's interface besides
// its own prefix: multicast (224.0.0.0/4) and the limited broadcast
// address. Without them a container with only the overlay route gets
// "Network is unreachable" for both; with them the datagrams reach the
// bridge, where the host replicates them to the hosts with members
// (package mcast).
var ContainerLinkRoutes = []netip.Prefix{
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("255.255.255.255/32"),
}

// HostVethName is the name of the host end of the veth pair that attaches
// ifName in the namespace at nsPath: "vethwe" and 8 hex digits of a hash of
// both, 14 characters, the same on every run so a restarted daemon finds it.
func HostVethName(nsPath, ifName string) string {
	h := sha256.Sum256([]byte(nsPath + "\x00" + ifName))
	return "vethwe" + hex.EncodeToString(h[:4])
}

// Attach gives a namespace an interface on the bridge.
//
// It creates a veth pair whose host end (HostVethName) is on the bridge and
// whose other end is created directly inside the namespace under its final
// name, so no half-made interface is ever seen there. Inside the namespace
// the work is done through a netlink handle opened in it; the calling
// thread never changes namespace.
func (h *Host) Attach(spec AttachSpec) (Attached, error) {
	ifName := spec.IfName
	if ifName == "" {
		ifName = DefaultIfName
	}
	if len(ifName) > maxIfNameLen {
		return Attached{}, fmt.Errorf("attach: interface name %q is longer than %d characters", ifName, maxIfNameLen)
	}
	if !spec.IP.IsValid() {
		return Attached{}, fmt.Errorf("attach: namespace %s: no address given", spec.Netns)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return Attached{}, fmt.Errorf("attach: %w", ErrClosed)
	}

	ns, err := netns.GetFromPath(spec.Netns)
	if err != nil {
		return Attached{}, fmt.Errorf("attach: namespace %s: %w", spec.Netns, err)
	}
	defer ns.Close()
	cnl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return Attached{}, fmt.Errorf("attach: namespace %s: opening netlink: %w", spec.Netns, err)
	}
	defer cnl.Close()

	if _, err := cnl.LinkByName(ifName); err == nil {
		return Attached{}, fmt.Errorf("attach: namespace %s already has an interface %s (attached already?)", spec.Netns, ifName)
	} else if !isNotFound(err) {
		return Attached{}, fmt.Errorf("attach: namespace %s: %w", spec.Netns, err)
	}
	host := HostVethName(spec.Netns, ifName)
	if _, err := h.nl.LinkByName(host); err == nil {
		return Attached{}, fmt.Errorf("attach: namespace %s: host veth %s exists already (attached already?)", spec.Netns, host)
	}

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host, MTU: h.cfg.MTU},
		PeerName:      ifName,
		PeerMTU:       uint32(h.cfg.MTU),
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := h.nl.LinkAdd(veth); err != nil {
		return Attached{}, fmt.Errorf("attach: namespace %s: creating veth pair %s/%s: %w", spec.Netns, host, ifName, err)
	}
	fail := func(format string, args ...any) (Attached, error) {
		if l, err := h.nl.LinkByName(host); err == nil {
			h.nl.LinkDel(l)
		}
		return Attached{}, fmt.Errorf("attach: namespace %s: "+format, append([]any{spec.Netns}, args...)...)
	}

	hostLink, err := h.nl.LinkByName(host)
	if err != nil {
		return fail("host veth %s: %w", host, err)
	}
	if err := h.nl.LinkSetMasterByIndex(hostLink, h.brIndex); err != nil {
		return fail("putting %s on bridge %s: %w", host, h.cfg.Bridge, err)
	}
	if err := h.nl.LinkSetUp(hostLink); err != nil {
		return fail("setting %s up: %w", host, err)
	}
	h.setFastLeave(hostLink)

	inner, err := cnl.LinkByName(ifName)
	if err != nil {
		return fail("finding %s: %w", ifName, err)
	}
	if err := cnl.AddrAdd(inner, &netlink.Addr{IPNet: prefixToIPNet(spec.IP)}); err != nil {
		return fail("adding address %s to %s: %w", spec.IP, ifName, err)
	}
	if err := cnl.LinkSetUp(inner); err != nil {
		return fail("setting %s up: %w", ifName, err)
	}
	for _, dst := range append(slices.Clone(ContainerLinkRoutes), spec.Routes...) {
		r := &netlink.Route{LinkIndex: inner.Attrs().Index, Dst: prefixToIPNet(dst), Scope: netlink.SCOPE_LINK}
		if err := cnl.RouteReplace(r); err != nil {
			return fail("route %s dev %s: %w", dst, ifName, err)
		}
	}
	if spec.Gateway.Is4() {
		r := &netlink.Route{LinkIndex: inner.Attrs().Index, Gw: spec.Gateway.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}
		if err := cnl.RouteReplace(r); err != nil {
			return fail("default route via %s dev %s: %w", spec.Gateway, ifName, err)
		}
	}
	if lo, err := cnl.LinkByName("lo"); err != nil {
		return fail("finding lo: %w", err)
	} else if err := cnl.LinkSetUp(lo); err != nil {
		return fail("setting lo up: %w", err)
	}
	h.forgetNeighbors()
	h.settleLinks(host)
	return Attached{Netns: spec.Netns, IP: spec.IP, IfName: ifName, HostVeth: host, MTU: h.cfg.MTU}, nil
}

// Adopt puts a previously attached namespace's host veth back on the bridge
// after a restart; it fails if the namespace or veth is gone.
func (h *Host) Adopt(a Attached) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("adopt: %w", ErrClosed)
	}
	ns, err := netns.GetFromPath(a.Netns)
	if err != nil {
		return fmt.Errorf("adopt: namespace %s: %w", a.Netns, err)
	}
	ns.Close()
	link, err := h.nl.LinkByName(a.HostVeth)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("adopt: namespace %s: host veth %s is gone", a.Netns, a.HostVeth)
		}
		return fmt.Errorf("adopt: namespace %s: host veth %s: %w", a.Netns, a.HostVeth, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("adopt: namespace %s: %s is a %s link, not a veth", a.Netns, a.HostVeth, link.Type())
	}
	if err := h.nl.LinkSetMasterByIndex(link, h.brIndex); err != nil {
		return fmt.Errorf("adopt: namespace %s: putting %s on bridge %s: %w", a.Netns, a.HostVeth, h.cfg.Bridge, err)
	}
	if err := h.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("adopt: namespace %s: setting %s up: %w", a.Netns, a.HostVeth, err)
	}
	h.setFastLeave(link)
	h.settleLinks(a.HostVeth)
	return nil
}

// Detach removes an attachment's veth pair: deleting the host end deletes
// the namespace's end with it. An attachment whose veth is gone already is
// detached.
func (h *Host) Detach(a Attached) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("detach: %w", ErrClosed)
	}
	link, err := h.nl.LinkByName(a.HostVeth)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("detach: namespace %s: host veth %s: %w", a.Netns, a.HostVeth, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("detach: namespace %s: %s is a %s link, not a veth", a.Netns, a.HostVeth, link.Type())
	}
	if err := h.nl.LinkDel(link); err != nil && !isGone(err) {
		return fmt.Errorf("detach: namespace %s: deleting %s: %w", a.Netns, a.HostVeth, err)
	}
	return nil
}
