package hostnet

import (
	"slices"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// The shape of weavewg's accept rules in the host's forward chains
// (firewall_linux.go says where they go and why): built here, and read
// back from nftables and from iptables -S into the same shape.

// fwRule is one accept rule: packets in through In and out through Out
// ("" for any), and with Reply only those of a connection already made
// (ct state established,related).
type fwRule struct {
	In, Out string
	Reply   bool
}

// forwardRules is every rule weavewg adds to the host's forward chains
// for the overlay, in order: the one place they are built. Containers on
// the bridge talk to each other (the bridge is filtered when br_netfilter
// is on, as Docker turns it on), to peers through the TUN, and peers to
// them; likewise through each other device that carries peers' packets
// (the VXLAN fast path's).
func forwardRules(bridge, tun string, others ...string) []fwRule {
	rules := []fwRule{{In: bridge, Out: bridge}, {In: bridge, Out: tun}, {In: tun, Out: bridge}}
	for _, o := range others {
		rules = append(rules, fwRule{In: bridge, Out: o}, fwRule{In: o, Out: bridge})
	}
	return rules
}

// inputRules are every rule weavewg adds to the host's input chains:
// whatever reaches the host from the bridge, the TUN or another peer
// device. They are broad on purpose and safe: weavewg's own table sends
// all of it through overlay_in (expose_linux.go), which accepts only
// weavewg's DNS, group reports, replies, multicast replication and the
// exposures (a hidden host answers no ping), and drops the rest; a drop
// there is final, so these accepts only stop a default-deny input policy
// (ufw's) from dropping what weavewg lets in, its containers' DNS first.
func inputRules(bridge, tun string, others ...string) []fwRule {
	var rules []fwRule
	for _, d := range append([]string{bridge, tun}, others...) {
		rules = append(rules, fwRule{In: d})
	}
	return rules
}

// egressRules are added after forwardRules while some container has
// egress (attach --egress): from the bridge to any interface, and the
// replies back to it. They are broad on purpose and safe: weavewg's own
// forward filter (egress_linux.go) drops whatever leaves the bridge for a
// non-overlay interface from any address but an egress container's, and
// lets into the bridge only replies to those; a drop there is final, so
// these accepts only stop the host's default-deny policy from dropping
// what weavewg lets through.
func egressRules(bridge string) []fwRule {
	return []fwRule{{In: bridge}, {Out: bridge, Reply: true}}
}

// iptablesSpec is r as iptables arguments, carrying tag as its comment.
func (r fwRule) iptablesSpec(tag string) []string {
	var spec []string
	if r.In != "" {
		spec = append(spec, "-i", r.In)
	}
	if r.Out != "" {
		spec = append(spec, "-o", r.Out)
	}
	if r.Reply {
		spec = append(spec, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED")
	}
	return append(spec, "-m", "comment", "--comment", tag, "-j", "ACCEPT")
}

// nftExprs is r as nftables expressions.
func (r fwRule) nftExprs() []expr.Any {
	var e []expr.Any
	if r.In != "" {
		e = append(e, ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, r.In)...)
	}
	if r.Out != "" {
		e = append(e, ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, r.Out)...)
	}
	if r.Reply {
		e = append(e,
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		)
	}
	return append(e, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})
}

// parseIPTablesRule reads the shape of a rule from the fields of its
// iptables -S line.
func parseIPTablesRule(fields []string) fwRule {
	var r fwRule
	for i := 0; i+1 < len(fields); i++ {
		switch fields[i] {
		case "-i":
			r.In = fields[i+1]
		case "-o":
			r.Out = fields[i+1]
		}
	}
	r.Reply = slices.Contains(fields, "--ctstate") || slices.Contains(fields, "--state")
	return r
}
