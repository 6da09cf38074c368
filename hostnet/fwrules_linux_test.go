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
	f.setFilter(filterSpec{egress: nil})
	base := len(f.rules)
	f.setFilter(filterSpec{egress: []netip.Addr{netip.MustParseAddr("10.32.0.5")}})
	if len(f.rules) != base+2 {
		t.Fatalf("with egress: %d rules, want %d", len(f.rules), base+2)
	}
	for i, r := range f.rules {
		line := "-A DOCKER-USER " + strings.Join(f.rules[i].iptablesSpec(f.tag), " ")
		if got := f.classifyIPTables(line); got != i {
			t.Errorf("%+v: iptables -S %q reads as rule %d, want %d", r, line, got, i)
		}
		nr := &nftables.Rule{Exprs: r.nftExprs(), UserData: userdata.AppendString(nil, userdata.TypeComment, f.tag)}
		if got := f.classifyNFT(nr); got != i {
			t.Errorf("%+v: nftables reads as rule %d, want %d", r, got, i)
		}
		if got := f.classifyNFT(&nftables.Rule{Exprs: r.nftExprs()}); got != ruleOther {
			t.Errorf("%+v without weavewg's comment reads as rule %d, want another's", r, got)
		}
	}
	egress := f.rules[base:]
	f.setFilter(filterSpec{})
	for _, r := range egress {
		line := "-A FORWARD " + strings.Join(r.iptablesSpec(f.tag), " ")
		if got := f.classifyIPTables(line); got != len(f.rules) {
			t.Errorf("%+v once no container has egress: reads as rule %d, want out of place (%d)", r, got, len(f.rules))
		}
	}
	// Another's rule of the same shape is not weavewg's.
	if got := f.classifyIPTables("-A FORWARD -i weavewg -j ACCEPT"); got != ruleOther {
		t.Errorf("an untagged rule reads as %d", got)
	}
}
