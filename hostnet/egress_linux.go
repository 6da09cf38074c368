package hostnet

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// Egress (attach --egress): a namespace attached with no other interface
// may get a default route through its host, which masquerades its
// traffic to the host's own address on the way out of the host's uplink,
// as Docker does for its bridge. Only the addresses given to SetEgress
// may leave the overlay through the host; a container that adds a
// default route by hand gets nowhere. In the forward chain, first:
//
//	oifname "<bridge>" ip daddr <egress addr> ct state established,related accept
//	iifname "<bridge>" oifname != { "<bridge>", <peer devices> } ip saddr <egress addr> accept
//
// and first in from_bridge, where the forward chain sends the bridge's
// packets (filter_linux.go):
//
//	oifname != { "<bridge>", <peer devices> } counter drop
//
// and a NAT chain in the same table:
//
//	chain egress_nat {
//		type nat hook postrouting priority srcnat; policy accept;
//		ip saddr <egress addr> oifname != { "<bridge>", <peer devices> } masquerade
//	}
//
// The host's own default-deny forward policy (Docker's FORWARD DROP, ufw's)
// would drop egress all the same: while there is an egress address the
// firewall (firewall_linux.go) adds egressRules to the host's chains.

// addEgress adds the egress accepts to the forward chain fwd (call it
// before any other rule of fwd), the drop to fromBridge (likewise) and the
// NAT chain to t.
func addEgress(c *nftables.Conn, t *nftables.Table, fwd, fromBridge *nftables.Chain, spec filterSpec, peerDevs []string, sets *ifnameSets) {
	notOverlay := func(k expr.MetaKey) []expr.Any {
		return sets.in(k, false, "overlay_devs", append([]string{spec.bridge}, peerDevs...)...)
	}
	host32 := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 32) }
	egress := slices.DeleteFunc(slices.Clone(spec.egress), func(a netip.Addr) bool { return !a.Is4() })
	for _, a := range egress {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(append(append(
			ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, spec.bridge), ipv4()...), ipField(16, host32(a))...),
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Verdict{Kind: expr.VerdictAccept},
		)})
	}
	out := func() []expr.Any {
		return append(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, spec.bridge), notOverlay(expr.MetaKeyOIFNAME)...)
	}
	for _, a := range egress {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(append(append(out(), ipv4()...), ipField(12, host32(a))...),
			&expr.Verdict{Kind: expr.VerdictAccept})})
	}
	// The bridge's other traffic out of the overlay, in the chain the
	// forward chain sends the bridge's packets to.
	c.AddRule(&nftables.Rule{Table: t, Chain: fromBridge, Exprs: append(notOverlay(expr.MetaKeyOIFNAME), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})})
	if len(egress) == 0 {
		return
	}
	policy := nftables.ChainPolicyAccept
	nat := c.AddChain(&nftables.Chain{
		Name:     "egress_nat",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &policy,
	})
	for _, a := range egress {
		c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: append(append(append(ipv4(), ipField(12, host32(a))...), notOverlay(expr.MetaKeyOIFNAME)...),
			&expr.Masq{})})
	}
}

// sortedAddrs is addrs in the filter's order (a copy).
func sortedAddrs(addrs []netip.Addr) []netip.Addr {
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs
}

// SetEgress makes the addresses that may leave through the host exactly
// sources.
func (h *Host) SetEgress(sources []netip.Addr) error {
	sources = sortedAddrs(sources)
	h.mu.Lock()
	defer h.mu.Unlock()
	changed, err := h.changeFilterLocked(func(spec *filterSpec) bool {
		if slices.Equal(sources, spec.egress) {
			return false
		}
		spec.egress = sources
		return true
	})
	if err != nil || !changed {
		return err
	}
	// The host's default-deny forward policy (Docker's, ufw's) is passed
	// now, not at the watcher's next check.
	repaired, err := h.fw.ensure()
	if err != nil {
		return fmt.Errorf("host networking: egress: %w", err)
	}
	if len(repaired) > 0 {
		h.log.Info("firewall rules for egress changed", "where", strings.Join(repaired, ", "), "egress", len(sources))
	}
	return nil
}
