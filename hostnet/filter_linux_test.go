package hostnet

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TestForwardDispatchesOnce: every packet the host forwards runs the
// forward chain, so it reads the input interface once per kind of match:
// a verdict map by index for the bridge and the TUN (they exist while the
// table does; an index is a 4-byte load where a name is a 16-byte copy),
// one by name for the other devices (made later), each sending the
// bridge's packets to from_bridge and each peer device's to from_peer,
// and one rule besides (nothing into an overlay device from elsewhere);
// each of those chains ends with its MSS clamp. A chain of rules that
// each named an interface cost every forwarded packet four rules and six
// interface-name copies.
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
	if len(rules) != 3 {
		t.Fatalf("forward chain has %d rules, want the two dispatches and one drop", len(rules))
	}
	loads := map[expr.MetaKey]int{}
	var maps []string
	for _, r := range rules {
		for _, e := range r.Exprs {
			if m, ok := e.(*expr.Meta); ok {
				loads[m.Key]++
			}
			if l, ok := e.(*expr.Lookup); ok && l.IsDestRegSet {
				maps = append(maps, l.SetName)
			}
		}
	}
	if loads[expr.MetaKeyIIF] != 1 || loads[expr.MetaKeyIIFNAME] != 1 || loads[expr.MetaKeyOIFNAME] != 1 || len(maps) != 2 {
		t.Fatalf("forward chain: interface loads %v (want one index, one name, one output name), verdict maps %v", loads, maps)
	}
	// Read through nft: google/nftables does not decode a map's verdicts.
	// nft prints an index by its interface's name.
	var out string
	for _, m := range maps {
		out += run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "map", "inet", tbl.Name, m)
	}
	for _, want := range []string{`type iface_index : verdict`, `"weavewg" : goto from_bridge`, `"weavewg0" : goto from_peer`,
		`type ifname : verdict`, `"vxweavewg0" : goto from_peer`} {
		if !strings.Contains(out, want) {
			t.Errorf("dispatch maps lack %s:\n%s", want, out)
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
