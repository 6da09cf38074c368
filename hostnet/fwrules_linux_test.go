package hostnet

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

// Every rule weavewg writes reads back as itself, from iptables -S and
// from nftables, and an egress rule left over once no container has
// egress reads as out of place (so it is removed).
func TestFirewallRulesReadBack(t *testing.T) {
	f := newFirewall(0, "weavewg", "weavewg0", []string{"vxlan-6784"}, nil)
	overlay := netip.MustParsePrefix("10.32.0.0/12")
	f.setFilter(filterSpec{overlay: overlay})
	base := len(f.fwd.rules)
	f.setFilter(filterSpec{overlay: overlay, egress: []netip.Addr{netip.MustParseAddr("10.32.0.5")}})
	if len(f.fwd.rules) != base+2 {
		t.Fatalf("with egress: %d rules, want %d", len(f.fwd.rules), base+2)
	}
	for i, r := range f.fwd.rules {
		line := "-A DOCKER-USER " + strings.Join(f.fwd.rules[i].iptablesSpec(f.tag), " ")
		if got := f.classifyIPTables(line, &f.fwd); got != i {
			t.Errorf("%+v: iptables -S %q reads as rule %d, want %d", r, line, got, i)
		}
		nr := &nftables.Rule{Exprs: r.nftExprs(), UserData: userdata.AppendString(nil, userdata.TypeComment, f.tag)}
		if got := f.classifyNFT(nr, &f.fwd); got != i {
			t.Errorf("%+v: nftables reads as rule %d, want %d", r, got, i)
		}
		if got := f.classifyNFT(&nftables.Rule{Exprs: r.nftExprs()}, &f.fwd); got != ruleOther {
			t.Errorf("%+v without weavewg's comment reads as rule %d, want another's", r, got)
		}
	}
	// The input rules: one per overlay device, read back as themselves
	// on the input hook only.
	if len(f.in.rules) != 3 {
		t.Fatalf("input rules %+v, want one for each of the bridge, the TUN, the other device", f.in.rules)
	}
	for i, r := range f.in.rules {
		line := "-A INPUT " + strings.Join(r.iptablesSpec(f.tag), " ")
		if got := f.classifyIPTables(line, &f.in); got != i {
			t.Errorf("input %+v: %q reads as rule %d, want %d", r, line, got, i)
		}
		nr := &nftables.Rule{Exprs: r.nftExprs(), UserData: userdata.AppendString(nil, userdata.TypeComment, f.tag)}
		if got := f.classifyNFT(nr, &f.in); got != i {
			t.Errorf("input %+v: nftables reads as rule %d, want %d", r, got, i)
		}
	}
	egress := f.fwd.rules[base:]
	f.setFilter(filterSpec{overlay: overlay})
	for _, r := range egress {
		line := "-A FORWARD " + strings.Join(r.iptablesSpec(f.tag), " ")
		if got := f.classifyIPTables(line, &f.fwd); got != len(f.fwd.rules) {
			t.Errorf("%+v once no container has egress: reads as rule %d, want out of place (%d)", r, got, len(f.fwd.rules))
		}
	}
	// Another's rule of the same shape is not weavewg's.
	if got := f.classifyIPTables("-A FORWARD -i weavewg -j ACCEPT", &f.fwd); got != ruleOther {
		t.Errorf("an untagged rule reads as %d", got)
	}
}

// Without an IPv4 overlay the own table has no overlay_in to gate what
// reaches the host, so no input rule is made.
func TestNoInputRulesWithoutOverlay(t *testing.T) {
	f := newFirewall(0, "weavewg", "weavewg0", nil, nil)
	f.setFilter(filterSpec{})
	if len(f.in.rules) != 0 {
		t.Errorf("input rules without an overlay: %+v", f.in.rules)
	}
}
