package hostnet

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/internal/rpfilter"
)

// setupBridge creates the bridge, or adopts the one a previous run left
// behind (after a kill -9), and makes it exactly: MTU, a stable MAC address,
// HostIP as its only IPv4 address (which gives the connected route for the
// overlay prefix), up. Then the sysctls the data plane needs.
func setupBridge(nl *netlink.Handle, name string, mtu int, hostIP netip.Prefix, macSeed []byte) (netlink.Link, error) {
	link, err := nl.LinkByName(name)
	switch {
	case err == nil:
		if link.Type() != "bridge" {
			return nil, fmt.Errorf("bridge %s: a %s link of that name exists", name, link.Type())
		}
	case isNotFound(err):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu, HardwareAddr: bridgeMAC(macSeed)}}
		if err := nl.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("bridge %s: creating: %w", name, err)
		}
		if link, err = nl.LinkByName(name); err != nil {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
	default:
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	// A bridge takes the lowest MAC address of its ports unless one was set
	// explicitly; then every new container would change the address that the
	// others have cached for the gateway and every proxy-ARPed peer address.
	// Setting it (again, on an adopted bridge) pins it.
	if err := nl.LinkSetHardwareAddr(link, bridgeMAC(macSeed)); err != nil {
		return nil, fmt.Errorf("bridge %s: setting the MAC address: %w", name, err)
	}
	if err := nl.LinkSetMTU(link, mtu); err != nil {
		return nil, fmt.Errorf("bridge %s: setting MTU %d: %w", name, mtu, err)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: listing addresses: %w", name, err)
	}
	// No address yet (a joiner waiting for IPAM) leaves the bridge
	// without one; SetHostIP adds it.
	var want *netlink.Addr
	if hostIP.IsValid() {
		want = &netlink.Addr{IPNet: prefixToIPNet(hostIP)}
	}
	for _, a := range addrs {
		if want == nil || a.IPNet.String() != want.IPNet.String() {
			if err := nl.AddrDel(link, &a); err != nil {
				return nil, fmt.Errorf("bridge %s: removing stale address %s: %w", name, a.IPNet, err)
			}
		}
	}
	if want != nil {
		if err := nl.AddrReplace(link, want); err != nil {
			return nil, fmt.Errorf("bridge %s: adding address %s: %w", name, hostIP, err)
		}
	}
	if err := nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bridge %s: setting up: %w", name, err)
	}
	return link, nil
}

// setSysctls sets what routing between the bridge and the TUN needs. It
// writes /proc/sys/net, which shows the network namespace of the calling
// thread: run it there.
//
//   - ip_forward: the host routes between containers on the bridge and the TUN.
//   - proxy_arp on the bridge: the bridge answers ARP for every address routed
//     elsewhere (into the TUN), so containers see one flat subnet.
//   - neigh proxy_delay 0 on the bridge: by default a proxied answer to a
//     broadcast ARP request is delayed randomly by up to 0.8 s.
//   - reverse-path filtering on the bridge and TUN never strict: strict mode
//     would drop packets from peers whose addresses are routed into the TUN
//     only once SetPeers has run. Loose where the host's settings would make
//     it strict, else as the host has it (package rpfilter: loose filtering
//     costs a FIB lookup per packet).
func setSysctls(bridge, tun string) error {
	for _, s := range []struct{ path, val string }{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/" + bridge + "/proxy_arp", "1"},
		{"net/ipv4/neigh/" + bridge + "/proxy_delay", "0"},
	} {
		p := filepath.Join("/proc/sys", s.path)
		if err := os.WriteFile(p, []byte(s.val), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", s.path, s.val, err)
		}
	}
	for _, dev := range []string{bridge, tun} {
		if err := rpfilter.NotStrict(dev); err != nil {
			return err
		}
	}
	return nil
}

// forgetNeighbors deletes the host's learned neighbor entries on the
// bridge, called when a new port comes. An address handed out again (a
// container restarted by dockerd gets its old address on a new veth) would
// otherwise stay mapped to the old MAC address until the entry expires:
// REACHABLE for up to 45 s, then 8 s of probes to the old address, while
// the bridge floods every forwarded packet to a MAC address nobody has.
// Each live container costs one ARP exchange to be learned again.
func (h *Host) forgetNeighbors() {
	neighs, err := h.nl.NeighList(h.brIndex, netlink.FAMILY_V4)
	if err != nil {
		h.log.Warn("listing neighbors on the bridge", "bridge", h.cfg.Bridge, "err", err)
		return
	}
	for _, n := range neighs {
		if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		if err := h.nl.NeighDel(&n); err != nil && !isGone(err) {
			h.log.Warn("forgetting a neighbor on the bridge", "bridge", h.cfg.Bridge, "ip", n.IP.String(), "err", err)
		}
	}
}

// settleLinks makes the kernel apply the carrier of a port that just came
// up (hostVeth, both ends up) to the port and to the bridge before the
// caller returns. The kernel applies carrier changes in its link-watch
// work: a veth's at once, but the bridge's (whose carrier comes on with
// its first forwarding port) up to a second later, and until then the
// bridge device drops what the host sends into it, so the first
// container on a host missed the host's ARP request and the first
// packets routed to it from the TUN. Reading a link (RTM_GETLINK) runs
// its pending link-watch event at once, the port's first since it turns
// the bridge's carrier on.
func (h *Host) settleLinks(hostVeth string) {
	if _, err := h.nl.LinkByName(hostVeth); err != nil {
		h.log.Debug("reading a new port", "veth", hostVeth, "err", err)
	}
	if _, err := h.nl.LinkByIndex(h.brIndex); err != nil {
		h.log.Debug("reading the bridge", "bridge", h.cfg.Bridge, "err", err)
	}
}

// bridgeMAC derives a locally administered unicast MAC address from seed, so
// the bridge keeps its address across restarts of the daemon.
func bridgeMAC(seed []byte) net.HardwareAddr {
	h := sha256.Sum256(append([]byte("weavewg bridge mac "), seed...))
	mac := net.HardwareAddr(h[:6])
	mac[0] = (mac[0] &^ 0x01) | 0x02
	return mac
}

// tunRoute is the route that sends dst into the TUN from the bridge address.
func tunRoute(tunIndex int, dst netip.Prefix, src netip.Addr) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: tunIndex,
		Dst:       prefixToIPNet(dst),
		Scope:     netlink.SCOPE_LINK,
	}
	if src.IsValid() && src.Is4() == dst.Addr().Is4() {
		r.Src = src.AsSlice()
	}
	return r
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// isGone reports whether a delete failed only because the thing is not there.
func isGone(err error) bool {
	return isNotFound(err) || errors.Is(err, unix.ESRCH)
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}
