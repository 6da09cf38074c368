package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// natCell is one cell of the NAT grid: a pair of hosts and whether their
// NATs let a direct path open.
type natCell struct {
	row, col   string
	a, b       *testbed.Host
	wantDirect bool
	// Results.
	direct   bool
	took     time.Duration // launch of the last host → both sides direct
	typeAB   string        // candidate type a uses for b ("" when not through ICE)
	pathSeen string
}

// TestNAT is the acceptance of issue 8 in one bed: the grid {public, easy
// NAT, hard NAT}² plus two peers behind one NAT (1), a router forgetting its
// mappings mid-transfer (2), and forged STUN (3).
//
// Hosts: h1 public hub (everyone dials it), h2 public, h3 and h4 each
// behind an easy NAT of their own, h5 and h6 each behind a hard NAT of
// their own, h7 and h8 behind one easy NAT together. Every NATed host dials
// h1 and h2, so every pair has a relay in common.
func TestNAT(t *testing.T) {
	needTool(t, "ping", "nft")
	b := newBed(t, testbed.Options{LogLevel: "info"})
	p0 := b.AddHost(testbed.HostOptions{NoPeers: true})
	p1 := b.AddHost(testbed.HostOptions{Peers: []string{p0.UnderlayIP}})
	public := []string{p0.UnderlayIP, p1.UnderlayIP}
	nE1 := b.AddNAT(testbed.NATEasy, 101, 0)
	nE2 := b.AddNAT(testbed.NATEasy, 102, 1)
	nH1 := b.AddNAT(testbed.NATHard, 103, 2)
	nH2 := b.AddNAT(testbed.NATHard, 104, 3)
	nS := b.AddNAT(testbed.NATEasy, 105, 4)
	e1 := b.AddHostBehind(nE1, testbed.HostOptions{Peers: public})
	e2 := b.AddHostBehind(nE2, testbed.HostOptions{Peers: public})
	h1 := b.AddHostBehind(nH1, testbed.HostOptions{Peers: public})
	h2 := b.AddHostBehind(nH2, testbed.HostOptions{Peers: public})
	s1 := b.AddHostBehind(nS, testbed.HostOptions{Peers: public})
	s2 := b.AddHostBehind(nS, testbed.HostOptions{Peers: public})
	start := time.Now()
	hosts := []*testbed.Host{p0, p1, e1, e2, h1, h2, s1, s2}
	role := map[*testbed.Host]string{p0: "public hub", p1: "public", e1: "easy NAT", e2: "easy NAT", h1: "hard NAT", h2: "hard NAT", s1: "same NAT", s2: "same NAT"}
	for _, h := range hosts {
		t.Logf("%s: %s at %s", h.Name, role[h], h.UnderlayIP)
	}

	cells := []*natCell{
		{row: "public", col: "public", a: p0, b: p1, wantDirect: true},
		{row: "public", col: "easy", a: p1, b: e1, wantDirect: true},
		{row: "public", col: "hard", a: p1, b: h1, wantDirect: true},
		{row: "easy", col: "easy", a: e1, b: e2, wantDirect: true},
		{row: "easy", col: "hard", a: e2, b: h2, wantDirect: false},
		{row: "hard", col: "hard", a: h1, b: h2, wantDirect: false},
		{row: "same NAT", col: "same NAT", a: s1, b: s2, wantDirect: true},
	}

	// Every host reaches every other in gossip.
	for _, h := range hosts {
		testbed.Eventually(t, 60*time.Second, h.Name+" reaches every peer", func() error {
			st, err := h.StatusErr()
			if err != nil {
				return err
			}
			for _, o := range hosts {
				if p := testbed.PeerByNick(st, o.Name); p == nil || !p.Reachable {
					return fmt.Errorf("%s not reachable", o)
				}
			}
			return nil
		})
	}

	// Watch every cell in parallel: one status poll per host per round.
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		sts := statuses(hosts)
		pending := 0
		for _, c := range cells {
			if c.direct {
				continue
			}
			pa, pb := testbed.PathTo(sts[c.a], c.b.Name), testbed.PathTo(sts[c.b], c.a.Name)
			c.pathSeen = pa + " / " + pb
			if pa == "direct" && pb == "direct" {
				c.direct, c.took = true, time.Since(start)
				c.typeAB = iceType(sts[c.a], c.b.Name)
				continue
			}
			if c.wantDirect {
				pending++
			}
		}
		// Relayed cells must have tried ICE (and failed) before they count.
		if pending == 0 && time.Since(start) > 40*time.Second {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}

	// Every pair reaches the other's containers.
	ctrs := map[*testbed.Host]*testbed.Container{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() {
			c, err := h.AddContainerErr("")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("container on %s: %v", h, err)
				return
			}
			ctrs[h] = c
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, c := range cells {
		wg.Go(func() {
			if err := ctrs[c.a].PingEventually(ctrs[c.b].Addr, 30*time.Second); err != nil {
				t.Errorf("%s↔%s (%s–%s): %v", c.row, c.col, c.a, c.b, err)
			}
			if err := ctrs[c.b].PingEventually(ctrs[c.a].Addr, 30*time.Second); err != nil {
				t.Errorf("%s↔%s (%s–%s): %v", c.col, c.row, c.b, c.a, err)
			}
		})
	}
	wg.Wait()

	// The grid, then the assertions.
	sts := statuses(hosts)
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-10s %-34s %-34s %-34s\n", "", "public", "easy NAT", "hard NAT")
	cellText := func(row, col string) string {
		for _, c := range cells {
			if c.row == row && c.col == col {
				return c.text()
			}
		}
		return ""
	}
	for _, row := range []string{"public", "easy", "hard"} {
		fmt.Fprintf(&sb, "%-10s", row)
		for _, col := range []string{"public", "easy", "hard"} {
			txt := cellText(row, col)
			if txt == "" {
				txt = cellText(col, row)
				if txt != "" {
					txt = "(as " + col + "↔" + row + ")"
				}
			}
			fmt.Fprintf(&sb, " %-34s", txt)
		}
		sb.WriteString("\n")
	}
	fmt.Fprintf(&sb, "%-10s %s\n", "same NAT", cellText("same NAT", "same NAT"))
	sb.WriteString("\nNAT behaviour as observed:\n")
	for _, h := range hosts {
		fmt.Fprintf(&sb, "  %-3s %-10s %s\n", h.Name, role[h], natText(sts[h].NAT))
	}
	t.Log(sb.String())
	for _, c := range cells {
		switch {
		case c.wantDirect && !c.direct:
			t.Errorf("%s↔%s (%s–%s): want direct, path is %s", c.row, c.col, c.a, c.b, c.pathSeen)
		case !c.wantDirect && c.direct:
			t.Errorf("%s↔%s (%s–%s): direct after %v, but these NATs should not allow it", c.row, c.col, c.a, c.b, c.took)
		case !c.wantDirect:
			if p := testbed.PathTo(sts[c.a], c.b.Name); !strings.HasPrefix(p, "relayed via") {
				t.Errorf("%s↔%s (%s–%s): path %q, want relayed", c.row, c.col, c.a, c.b, p)
			}
			ctr := sts[c.a].Counters["nat_ice_sessions_failed"] + sts[c.b].Counters["nat_ice_sessions_failed"]
			if ctr == 0 {
				t.Errorf("%s↔%s: no failed ICE session counted on either side", c.row, c.col)
			}
		}
	}
	// Observed NAT behaviour.
	if n := sts[h1].NAT; n == nil || !n.VariesPerDestination {
		t.Errorf("%s behind a hard NAT: observed %s, want a mapping that varies per destination", h1, natText(n))
	}
	if n := sts[e1].NAT; n == nil || n.VariesPerDestination || n.Public || len(n.Mappings) < 2 {
		t.Errorf("%s behind an easy NAT: observed %s, want one mapping for every destination", e1, natText(n))
	}
	if n := sts[p1].NAT; n == nil || !n.Public {
		t.Errorf("%s public: observed %s", p1, natText(n))
	}
	if t.Failed() {
		return
	}

	t.Run("flush mid-transfer", func(t *testing.T) {
		// public↔hard: the router forgets its mappings while a ping runs;
		// the new mapping has another port, so the path must be found
		// again.
		ping, err := ctrs[h1].StartPing(ctrs[p1].Addr, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		before := testbed.ConnsTo(p1.Status(), h1.Name)
		if err := nH1.FlushMappings(); err != nil {
			t.Fatal(err)
		}
		flushed := time.Now()
		var seq []string
		last := ""
		for time.Since(flushed) < 30*time.Second {
			p := testbed.PathTo(p1.Status(), h1.Name) + " / " + testbed.PathTo(h1.Status(), p1.Name)
			if p != last {
				seq = append(seq, fmt.Sprintf("%.1fs %s", time.Since(flushed).Seconds(), p))
				last = p
			}
			if len(seq) > 1 && p == "direct / direct" {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
		replies, gap := ping.Stop()
		after := testbed.ConnsTo(p1.Status(), h1.Name)
		t.Logf("after the flush (p1→h1 / h1→p1): %s", strings.Join(seq, " → "))
		t.Logf("endpoint of h1 at p1: %s before, %s after; ping: %d replies, longest gap %v", endpointOf(before), endpointOf(after), replies, gap)
		if last != "direct / direct" {
			t.Errorf("not direct again within 30 s of the flush: %s", strings.Join(seq, " → "))
		}
		if gap > 30*time.Second {
			t.Errorf("traffic stopped for %v", gap)
		}
	})

	t.Run("forged STUN", func(t *testing.T) {
		node := b.AddNode(200)
		dst := netip.MustParseAddrPort(p1.UnderlayIP + ":6783")
		src := netip.MustParseAddrPort("192.0.2.200:40000")
		// h1's current address as p1 sees it, to spoof.
		spoof := src
		if ep, err := netip.ParseAddrPort(endpointOf(testbed.ConnsTo(p1.Status(), h1.Name))); err == nil {
			spoof = ep
		}
		before := p1.Status()
		tx := func(b byte) []byte { return []byte{b, b, b, b, b, b, b, b, b, b, b, b} }
		stunMsg := func(typ uint16, id []byte, attrs []byte) []byte {
			m := []byte{byte(typ >> 8), byte(typ), byte(len(attrs) >> 8), byte(len(attrs)), 0x21, 0x12, 0xa4, 0x42}
			m = append(m, id...)
			return append(m, attrs...)
		}
		user := func(u string) []byte {
			a := []byte{0, 6, 0, byte(len(u))}
			a = append(a, u...)
			for len(a)%4 != 0 {
				a = append(a, 0)
			}
			return append(a, 0, 8, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20) // bogus MESSAGE-INTEGRITY
		}
		forged := []struct {
			name    string
			from    netip.AddrPort
			pkt     []byte
			counter string
		}{
			{"truncated attribute", src, stunMsg(0x0001, tx(1), []byte{0, 6, 0, 40, 'a', 'b', 'c', 'd'}), "nat_stun_malformed"},
			{"check for an unknown ufrag", src, stunMsg(0x0001, tx(2), user("nobody:x")), "nat_stun_unknown_ufrag"},
			{"answer nobody asked for, spoofed from h1", spoof, stunMsg(0x0101, tx(3), []byte{0, 0x20, 0, 8, 0, 1, 0x3b, 0x6d, 0xe1, 0x12, 0xa6, 0x43}), "nat_stun_unknown_transaction"},
			{"error answer with a made-up transaction", spoof, stunMsg(0x0111, tx(4), nil), "nat_stun_unknown_transaction"},
			{"indication", src, stunMsg(0x0011, tx(5), nil), "nat_stun_unexpected"},
			{"binding request (answered)", src, stunMsg(0x0001, tx(6), nil), "nat_stun_answered"},
		}
		want := map[string]uint64{}
		for _, f := range forged {
			for range 5 {
				if err := testbed.SendRawUDP(node, f.from, dst, f.pkt); err != nil {
					t.Fatalf("%s: %v", f.name, err)
				}
			}
			want[f.counter] += 5
		}
		var after *api.Status
		testbed.Eventually(t, 10*time.Second, "forged STUN counted", func() error {
			after = p1.Status()
			for name, n := range want {
				if got := after.Counters[name] - before.Counters[name]; got < n {
					return fmt.Errorf("%s +%d, want +%d", name, got, n)
				}
			}
			return nil
		})
		for name := range want {
			t.Logf("%s +%d", name, after.Counters[name]-before.Counters[name])
		}
		if e0, e1 := endpointOf(testbed.ConnsTo(before, h1.Name)), endpointOf(testbed.ConnsTo(after, h1.Name)); e0 != e1 {
			t.Errorf("h1's endpoint moved from %s to %s", e0, e1)
		}
		if err := ctrs[h1].PingEventually(ctrs[p1].Addr, 10*time.Second); err != nil {
			t.Error(err)
		}
		if p := testbed.PathTo(p1.Status(), h1.Name); p != "direct" {
			t.Errorf("p1→h1 path %q after forged STUN", p)
		}
	})
}

func (c *natCell) text() string {
	if !c.direct {
		return "relayed"
	}
	s := fmt.Sprintf("direct %.1fs", c.took.Seconds())
	if c.typeAB != "" {
		s += " (ice " + c.typeAB + ")"
	} else {
		s += " (gossip endpoint)"
	}
	return s
}

// statuses reads every host's status in parallel.
func statuses(hosts []*testbed.Host) map[*testbed.Host]*api.Status {
	out := make(map[*testbed.Host]*api.Status, len(hosts))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() {
			st, err := h.StatusErr()
			if err != nil {
				st = &api.Status{}
			}
			mu.Lock()
			out[h] = st
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// iceType is the candidate types ICE selected for st's peer nick, "" if
// the path is not ICE's.
func iceType(st *api.Status, nick string) string {
	for _, c := range testbed.ConnsTo(st, nick) {
		if c.Candidate != "" && c.Direct && c.Endpoint == c.ICEEndpoint {
			return c.LocalCandidate + "→" + c.Candidate
		}
	}
	return ""
}

func endpointOf(cs []api.Connection) string {
	for _, c := range cs {
		if c.Endpoint != "" {
			return c.Endpoint
		}
	}
	return ""
}

func natText(n *api.NATStatus) string {
	if n == nil {
		return "none"
	}
	var seen []string
	for _, m := range n.Mappings {
		seen = append(seen, m.Mapped+" by "+m.Server)
	}
	return fmt.Sprintf("%s [%s]", n.Mapping, strings.Join(seen, ", "))
}
