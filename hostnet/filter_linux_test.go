package hostnet

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TestForwardDispatchesOnce: every packet the host forwards runs the
// forward chain, so it reads the input interface once, a verdict map that
// sends the bridge's packets to from_bridge and each peer device's to
// from_peer, and holds one rule besides (nothing into an overlay device
// from elsewhere); each of those chains ends with its MSS clamp. A chain
// of rules that each named an interface cost every forwarded packet four
// rules and six interface-name copies.
func TestForwardDispatchesOnce(t *testing.T) {
	h := oneHost(t)
	h.cfg.Overlay = netipPrefix("10.32.0.0/12")
	h.cfg.OtherDevices = []string{"vxweavewg0"}
	h.start(t)
	c, err := nftables.New(nftables.WithNetNSFd(int(h.ns.H)))
	if err != nil {
		t.Fatal(err)
	}
	tbl := filterTable("weavewg0")
	rules, err := c.GetRules(tbl, &nftables.Chain{Name: "forward", Table: tbl})
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 2 {
		t.Fatalf("forward chain has %d rules, want the dispatch and one drop", len(rules))
	}
	ifnameLoads := 0
	var lookup *expr.Lookup
	for _, r := range rules {
		for _, e := range r.Exprs {
			if m, ok := e.(*expr.Meta); ok && (m.Key == expr.MetaKeyIIFNAME || m.Key == expr.MetaKeyOIFNAME) {
				ifnameLoads++
			}
			if l, ok := e.(*expr.Lookup); ok && l.IsDestRegSet && lookup == nil {
				lookup = l
			}
		}
	}
	if ifnameLoads != 2 || lookup == nil {
		t.Fatalf("forward chain: %d interface-name loads (want 2: the dispatch, the drop), verdict map %v", ifnameLoads, lookup)
	}
	// Read through nft: google/nftables does not decode a map's verdicts.
	out := run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "map", "inet", tbl.Name, lookup.SetName)
	for _, want := range []string{`"weavewg" : goto from_bridge`, `"weavewg0" : goto from_peer`, `"vxweavewg0" : goto from_peer`} {
		if !strings.Contains(out, want) {
			t.Errorf("dispatch map lacks %s:\n%s", want, out)
		}
	}
	for _, name := range []string{"from_bridge", "from_peer"} {
		rs, err := c.GetRules(tbl, &nftables.Chain{Name: name, Table: tbl})
		if err != nil || len(rs) == 0 {
			t.Fatalf("chain %s: %d rules, %v", name, len(rs), err)
		}
		last := rs[len(rs)-1].Exprs
		if _, ok := last[len(last)-1].(*expr.Exthdr); !ok {
			t.Errorf("chain %s does not end with the MSS clamp: %+v", name, last)
		}
	}
}
