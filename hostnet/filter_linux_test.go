package hostnet

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TestForwardDispatchesOnce: every packet the host forwards runs the
// forward chain, so it reads the input interface as cheaply as it can:
// the bridge and the TUN by index (they exist while the table does; an
// index is a 4-byte load where a name is a 16-byte copy), the other
// devices (made later) once, by name, through a verdict map, each
// sending the bridge's packets to from_bridge and each peer device's to
// from_peer, and one rule besides (nothing into an overlay device from
// elsewhere); each of those chains ends with its MSS clamp. A chain of
// rules that each named an interface cost every forwarded packet four
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
	if len(rules) != 4 {
		t.Fatalf("forward chain has %d rules, want the bridge's and the TUN's gotos, the others' map and one drop", len(rules))
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
	if loads[expr.MetaKeyIIF] != 2 || loads[expr.MetaKeyIIFNAME] != 1 || loads[expr.MetaKeyOIFNAME] != 1 || len(maps) != 1 {
		t.Fatalf("forward chain: interface loads %v (want two indexes, one name, one output name), verdict maps %v", loads, maps)
	}
	// Read through nft (google/nftables does not decode a map's verdicts);
	// nft prints an index by its interface's name.
	chain := run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "chain", "inet", tbl.Name, "forward")
	out := run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "map", "inet", tbl.Name, maps[0])
	for _, want := range []string{`iif "weavewg" goto from_bridge`, `iif "weavewg0" goto from_peer`} {
		if !strings.Contains(chain, want) {
			t.Errorf("forward chain lacks %s:\n%s", want, chain)
		}
	}
	if !strings.Contains(out, `"vxweavewg0" : goto from_peer`) {
		t.Errorf("dispatch map lacks the VXLAN device:\n%s", out)
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
