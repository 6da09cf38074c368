package hostnet

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Isolated subnets (Weave Net's net:CIDR). Containers of one subnet reach
// each other, on this host and others, and no other subnet's, even with
// a route added by hand inside a container. Each host enforces it for the
// subnets its own containers use (both directions, so a packet between
// two hosts is checked by each), in the inet table (the chains its forward
// chain dispatches to: from_bridge, from_peer),
// for what the host routes:
//
//	ip saddr <subnet> ip daddr <overlay> ip daddr != <subnet> counter drop
//	ip daddr <subnet> ip saddr <overlay> ip saddr != <subnet> counter drop
//
// and, for what the bridge switches between two containers of this host
// (which the inet table sees only when br_netfilter is loaded), the same
// two rules in a bridge-family table of the same name, for frames between
// the bridge's ports:
//
//	table bridge weavewg_<tun> {
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "vethw*" ether type ip <the two rules per subnet>
//		}
//	}
//
// Multicast and broadcast frames (group bit set in the destination MAC)
// are scoped by the port they leave through: each port with a container
// drops those whose source is outside that container's subnet, both those
// the bridge switches between ports (forward) and those the host puts on
// the bridge (output: what package mcast delivers from other hosts):
//
//	oifname <port> ether type ip ether daddr & 01:00:00:00:00:00 != 0
//		ip protocol != igmp ip saddr != <its subnet> counter drop
//
// IGMP is left alone: the bridge's own queries come from 0.0.0.0 and must
// reach every port, or members would stop reporting. The rules are linear
// in the ports (two per container), evaluated only for group frames.
//
// Traffic to the host itself (DNS, an exposure) is input, not forward, and
// is the business of overlay_in.

// portPrefix begins the name of every port weavewg puts on its bridge.
const portPrefix = "vethw"

// bridgeTable names the bridge-family table for tun.
func bridgeTable(tun string) *nftables.Table {
	return &nftables.Table{Name: "weavewg_" + tun, Family: nftables.TableFamilyBridge}
}

// isolationRules are the two drops of each subnet, matched after prefix
// (the bridge table's "this bridge, IPv4").
func isolationRules(spec filterSpec, prefix []expr.Any) [][]expr.Any {
	var out [][]expr.Any
	for _, s := range spec.subnets {
		if !s.Addr().Is4() || !spec.overlay.Addr().Is4() {
			continue
		}
		for _, dir := range [][2]uint32{{12, 16}, {16, 12}} { // saddr in s, daddr elsewhere; then the reverse
			r := slices.Clone(prefix)
			r = append(r, ipField(dir[0], s)...)
			r = append(r, ipField(dir[1], spec.overlay)...)
			r = append(r, ipFieldOp(dir[1], s, expr.CmpOpNeq)...)
			out = append(out, append(r, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}))
		}
	}
	return out
}

// addIsolation adds the subnet rules to the inet forward chains fwd (the
// bridge's and the peer devices', which the forward chain dispatches to)
// and (re)makes the bridge table, in c's transaction.
func addIsolation(c *nftables.Conn, t *nftables.Table, fwd []*nftables.Chain, spec filterSpec) {
	for _, ch := range fwd {
		for _, r := range isolationRules(spec, ipv4()) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
		}
	}
	bt := bridgeTable(spec.tun)
	c.AddTable(bt)
	c.DelTable(bt)
	if len(spec.subnets) == 0 {
		return
	}
	c.AddTable(bt)
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     "forward",
		Table:    bt,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	// The ports weavewg puts on its bridge: vethwe… (attach, CNI) and
	// vethwl… (Docker). A prefix, as nft's "vethw*": the comparison covers
	// the bytes given. (meta ibrname would name the bridge, but needs
	// nft_meta_bridge, which stock kernels may lack: EOPNOTSUPP here.)
	prefix := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(portPrefix)},
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x08, 0x00}}, // ether type ip
	}
	for _, r := range isolationRules(spec, prefix) {
		c.AddRule(&nftables.Rule{Table: bt, Chain: ch, Exprs: r})
	}
	out := c.AddChain(&nftables.Chain{
		Name:     "output",
		Table:    bt,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookOutput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	for _, r := range groupScopeRules(spec) {
		c.AddRule(&nftables.Rule{Table: bt, Chain: ch, Exprs: r})
		c.AddRule(&nftables.Rule{Table: bt, Chain: out, Exprs: slices.Clone(r)})
	}
}

// groupScopeRules drop, at each port, group-addressed IPv4 frames (other
// than IGMP) from outside the subnet of the port's container.
func groupScopeRules(spec filterSpec) [][]expr.Any {
	ports := slices.Sorted(maps.Keys(spec.ports))
	var out [][]expr.Any
	for _, port := range ports {
		s := spec.ports[port]
		if !s.Addr().Is4() {
			continue
		}
		r := ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, port)
		r = append(r,
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x08, 0x00}}, // ether type ip
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x01}, Xor: []byte{0x00}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x00}}, // group bit
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.IPPROTO_IGMP}},
		)
		r = append(r, ipFieldOp(12, s, expr.CmpOpNeq)...)
		out = append(out, append(r, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}))
	}
	return out
}

// removeBridgeTable deletes the bridge table; a missing one is fine. Its
// own transaction: a delete of a missing table fails the whole batch.
func removeBridgeTable(ns netns.NsHandle, tun string) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	c.DelTable(bridgeTable(tun))
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("subnet filter: %w", err)
	}
	return nil
}

// sortedSubnets is subnets in the filter's order (a copy).
func sortedSubnets(subnets []netip.Prefix) []netip.Prefix {
	subnets = slices.Clone(subnets)
	slices.SortFunc(subnets, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return subnets
}

// SetSubnets makes the isolation rules those of subnets (the subnets this
// host's containers use, the default one included; none when the default
// subnet is the whole range).
func (h *Host) SetSubnets(subnets []netip.Prefix) error {
	subnets = sortedSubnets(subnets)
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.changeFilterLocked(func(spec *filterSpec) bool {
		if slices.Equal(subnets, spec.subnets) {
			return false
		}
		spec.subnets = subnets
		return true
	})
	return err
}

// SetPortSubnets makes ports (a bridge port's name to the subnet of the
// container behind it) the ports whose multicast and broadcast frames are
// scoped to their subnet; they are used only while SetSubnets has subnets.
func (h *Host) SetPortSubnets(ports map[string]netip.Prefix) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.changeFilterLocked(func(spec *filterSpec) bool {
		if maps.Equal(ports, spec.ports) {
			return false
		}
		spec.ports = maps.Clone(ports)
		return true
	})
	return err
}
