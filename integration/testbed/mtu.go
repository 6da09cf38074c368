package testbed

import (
	"fmt"
	"strconv"
	"strings"
)

// Underlays with a smaller MTU, as clouds and tunnels have them.
//
// A host's link MTU (AddHostWithMTU) is the MTU of its eth0 and of its port
// on the underlay bridge: Google Cloud gives VM NICs 1460, tunnelled
// interconnects 1380 or so. Frames larger than a port's MTU are dropped by
// the veth, as a switch drops them, so a host on a 1500 link that sends
// 1480-byte datagrams to a host on a 1380 link hears nothing back (an L2
// black hole: only probing finds the size that crosses).
//
// A routed path with a smaller hop (AddMTURouter) is a router namespace:
//
//	PREFIX-mtuK  eth0 192.0.2.OCTET (underlay, MTU 1500)
//	             far0 203.0.113.(32K+1)/27, MTU out (e.g. 1400), a bridge
//	PREFIX-hN    behind it: eth0 203.0.113.(32K+j)/27 at MTU out,
//	             default route via the router
//
// Hosts on the underlay reach the far LAN through a route via the router
// (RouteVia), as an operator's routing table would say. The router forwards
// as Linux does by default: a datagram with DF set that does not fit far0 is
// dropped and answered with ICMP "fragmentation needed" (type 3 code 4)
// carrying the next-hop MTU. RouterBlackHole drops those ICMP messages
// instead, in its forward chain (ICMP of routers behind it) and its output
// chain (its own), as cloud firewalls that filter ICMP do: the sender is
// never told, so a path MTU can be found only by probing.
type RouterKind string

const (
	RouterICMP      RouterKind = "icmp"
	RouterBlackHole RouterKind = "black-hole"
)

// MTURouter is one router with a smaller MTU on its far side.
type MTURouter struct {
	bed    *Bed
	Kind   RouterKind
	Netns  string
	WANIP  string // 192.0.2.OCTET
	FarIP  string // its address on the far LAN
	FarNet string // the far LAN, CIDR
	OutMTU int
	index  int
	hosts  int
}

const farLANBase = "203.0.113."

// AddHostWithMTU makes a host (as AddHost) whose underlay link has MTU mtu
// before its daemon starts, and launches it unless opts.NoLaunch.
func (b *Bed) AddHostWithMTU(mtu int, opts HostOptions) *Host {
	b.tb.Helper()
	launch := !opts.NoLaunch
	opts.NoLaunch = true
	h := b.AddHost(opts)
	b.SetLinkMTU(h, mtu)
	if launch {
		h.Launch()
	}
	return h
}

// SetLinkMTU sets the MTU of h's underlay link, both ends.
func (b *Bed) SetLinkMTU(h *Host, mtu int) {
	b.tb.Helper()
	m := strconv.Itoa(mtu)
	b.MustIP(b.Underlay, "link", "set", fmt.Sprintf("p%d", h.Index), "mtu", m)
	b.MustIP(h.Netns, "link", "set", "eth0", "mtu", m)
	b.logf("testbed: %s: underlay link MTU %d", h, mtu)
}

// AddMTURouter makes a router of kind at underlay address 192.0.2.octet
// whose far LAN (index 0–7) has MTU out.
func (b *Bed) AddMTURouter(kind RouterKind, octet, index, out int) *MTURouter {
	b.tb.Helper()
	if index < 0 || index > 7 {
		b.tb.Fatalf("testbed: router LAN index %d out of 0-7", index)
	}
	name := fmt.Sprintf("%smtu%d", b.Prefix, index)
	b.addUnderlayNode(name, octet)
	r := &MTURouter{bed: b, Kind: kind, Netns: name, WANIP: fmt.Sprintf("%s%d", UnderlayNet, octet),
		FarIP: fmt.Sprintf("%s%d", farLANBase, 32*index+1), FarNet: fmt.Sprintf("%s%d/27", farLANBase, 32*index),
		OutMTU: out, index: index}
	b.MustIP(name, "link", "add", "far0", "type", "bridge", "mcast_snooping", "0")
	b.MustIP(name, "link", "set", "far0", "mtu", strconv.Itoa(out))
	b.MustIP(name, "addr", "add", r.FarIP+"/27", "dev", "far0")
	b.MustIP(name, "link", "set", "far0", "up")
	if _, err := run("ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
		b.tb.Fatalf("testbed: router %s: %v", name, err)
	}
	if kind == RouterBlackHole {
		script := `table inet wwgblackhole {
	chain forward {
		type filter hook forward priority filter; policy accept;
		icmp type destination-unreachable icmp code frag-needed counter drop
	}
	chain output {
		type filter hook output priority filter; policy accept;
		icmp type destination-unreachable icmp code frag-needed counter drop
	}
}
`
		if err := nsNft(name, script); err != nil {
			b.tb.Fatalf("testbed: %v", err)
		}
	}
	b.logf("testbed: router %s (%s) WAN %s (MTU 1500), far LAN %s (MTU %d)", name, kind, r.WANIP, r.FarNet, out)
	return r
}

// AddHostBehind makes a host (as AddHost) on r's far LAN at the far MTU,
// with a default route via r, and launches it unless opts.NoLaunch. Its
// UnderlayIP becomes its far-LAN address.
func (r *MTURouter) AddHostBehind(opts HostOptions) *Host {
	b := r.bed
	b.tb.Helper()
	launch := !opts.NoLaunch
	opts.NoLaunch = true
	h := b.AddHost(opts)
	r.hosts++
	addr := fmt.Sprintf("%s%d", farLANBase, 32*r.index+1+r.hosts)
	b.MustIP(h.Netns, "link", "del", "eth0")
	port := fmt.Sprintf("f%d", h.Index)
	m := strconv.Itoa(r.OutMTU)
	b.MustIP(r.Netns, "link", "add", port, "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", h.Netns)
	b.MustIP(r.Netns, "link", "set", port, "master", "far0", "up")
	b.MustIP(h.Netns, "addr", "add", addr+"/27", "dev", "eth0")
	b.MustIP(h.Netns, "link", "set", "eth0", "up")
	b.MustIP(h.Netns, "route", "add", "default", "via", r.FarIP)
	h.UnderlayIP = addr
	b.logf("testbed: %s behind router %s at %s (MTU %d)", h, r.Netns, addr, r.OutMTU)
	if launch {
		h.Launch()
	}
	return h
}

// RouteVia gives each host (on the underlay) a route to r's far LAN.
func (r *MTURouter) RouteVia(hs ...*Host) {
	r.bed.tb.Helper()
	for _, h := range hs {
		r.bed.MustIP(h.Netns, "route", "replace", r.FarNet, "via", r.WANIP)
	}
}

// Drops is how many ICMP "fragmentation needed" the black-hole router has
// dropped (0 for an ICMP router).
func (r *MTURouter) Drops() int {
	out, err := run("ip", "netns", "exec", r.Netns, "nft", "list", "table", "inet", "wwgblackhole")
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "packets" {
				v, _ := strconv.Atoi(f[i+1])
				n += v
			}
		}
	}
	return n
}

// LinkMTU reads the MTU of dev in namespace ns.
func (b *Bed) LinkMTU(ns, dev string) (int, error) {
	out, err := run("ip", "-n", ns, "-o", "link", "show", "dev", dev)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "mtu" {
			return strconv.Atoi(f[i+1])
		}
	}
	return 0, fmt.Errorf("no mtu in %q", out)
}
