package hostnet

import (
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// TestForwardDispatchesOnce: every packet the host forwards runs the
// forward chain, so it reads the input interface as cheaply as it can:
// the bridge and the TUN by index (they exist while the table does; an
// index is a 4-byte load where a name is a 16-byte copy), the other
// devices (made later; here missing) once, by name, through a verdict
// map (TestOtherDeviceMatchedByIndex: by index once they exist), each
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

// TestOtherDeviceMatchedByIndex: a peer device made after the table (the
// VXLAN fast path's, kernel WireGuard's) is dispatched by its index once
// it exists, and by its new index once it is made again; forwarding from
// it into a container works throughout (until the table follows, a device
// made again is dispatched by its name).
func TestOtherDeviceMatchedByIndex(t *testing.T) {
	h := oneHost(t)
	h.cfg.Overlay = netipPrefix("10.32.0.0/12")
	h.cfg.OtherDevices = []string{"vxweavewg0"}
	h.start(t)
	c1 := newNetns(t, "c1")
	if _, err := h.host.Attach(AttachSpec{Netns: c1.Path, IP: netipPrefix("10.32.1.1/12")}); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { h.host.WatchDeletedLinks(stop, func(string) {}); close(done) }()
	var once sync.Once
	stopWatch := func() { once.Do(func() { close(stop); <-done }) }
	t.Cleanup(stopWatch)
	// The device: a veth whose other end is a remote container, 10.40.0.9.
	remote := newNetns(t, "r")
	makeDev := func() uint32 {
		t.Helper()
		run(t, "ip", "-n", h.ns.Name, "link", "add", "vxweavewg0", "type", "veth", "peer", "name", "vxp", "netns", remote.Name)
		run(t, "ip", "netns", "exec", h.ns.Name, "sysctl", "-qw", "net.ipv4.conf.vxweavewg0.proxy_arp=1")
		run(t, "ip", "-n", h.ns.Name, "link", "set", "vxweavewg0", "up")
		run(t, "ip", "-n", h.ns.Name, "route", "add", "10.40.0.9/32", "dev", "vxweavewg0")
		run(t, "ip", "-n", remote.Name, "addr", "add", "10.40.0.9/32", "dev", "vxp")
		run(t, "ip", "-n", remote.Name, "link", "set", "vxp", "up")
		run(t, "ip", "-n", remote.Name, "route", "add", "10.32.1.1/32", "dev", "vxp")
		return indexes(h.ns.H, "vxweavewg0")["vxweavewg0"]
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h.ns.H)))
	if err != nil {
		t.Fatal(err)
	}
	tbl := filterTable("weavewg0")
	// dispatched reports whether the forward chain sends packets in
	// through index i to from_peer.
	dispatched := func(i uint32) bool {
		rules, err := c.GetRules(tbl, &nftables.Chain{Name: "forward", Table: tbl})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if len(r.Exprs) != 3 {
				continue
			}
			m, ok1 := r.Exprs[0].(*expr.Meta)
			cmp, ok2 := r.Exprs[1].(*expr.Cmp)
			v, ok3 := r.Exprs[2].(*expr.Verdict)
			if ok1 && ok2 && ok3 && m.Key == expr.MetaKeyIIF && string(cmp.Data) == string(binaryutil.NativeEndian.PutUint32(i)) &&
				v.Kind == expr.VerdictGoto && v.Chain == fromPeerChain {
				return true
			}
		}
		return false
	}
	waitDispatched := func(when string, i uint32) {
		t.Helper()
		for try := 0; try < 100 && !dispatched(i); try++ {
			time.Sleep(50 * time.Millisecond)
		}
		if !dispatched(i) {
			t.Fatalf("%s: the forward chain does not dispatch the device's index %d:\n%s", when, i,
				run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "chain", "inet", tbl.Name, "forward"))
		}
	}
	ping := func(when string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", remote.Name, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-n", "-q", "10.32.1.1").CombinedOutput(); err != nil {
			t.Errorf("%s: the remote container's ping through the device: %v\n%s", when, err, out)
		}
	}
	first := makeDev()
	waitDispatched("made after the table", first)
	ping("made after the table")
	run(t, "ip", "-n", h.ns.Name, "link", "del", "vxweavewg0")
	again := makeDev()
	if again == first {
		t.Fatalf("the device made again kept its index %d", first)
	}
	ping("made again") // by index or, until the table follows, by name
	waitDispatched("made again", again)
	if dispatched(first) {
		t.Errorf("the forward chain still dispatches the gone device's index %d", first)
	}
	ping("made again, the table made for it")
	// With nothing to make the table again (the watch stopped), a device
	// made again is still dispatched, by its name.
	stopWatch()
	run(t, "ip", "-n", h.ns.Name, "link", "del", "vxweavewg0")
	third := makeDev()
	if dispatched(third) {
		t.Fatalf("the table followed the device's index %d with the watch stopped: the test cannot see the name's match", third)
	}
	ping("made again with the table not made again")
}
