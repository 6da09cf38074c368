package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

// natCell is one pair of the NAT grid.
type natCell struct {
	row, col string        // NAT kinds of a and b
	a, b     *testbed.Host // a sends first
	// wantDirect: the NAT kinds let a direct path open whoever sends
	// first (see TestNAT for which and why); other cells must only reach.
	wantDirect bool
	why        string // why the cell must go direct, or why it may stay relayed
	// Results.
	firstAB, firstBA time.Duration // to the first reply, a→b then b→a
	errAB, errBA     error
	direct           bool
	took             time.Duration // containers attached → both sides direct
	typeAB           string        // candidate types a uses for b ("" when not through ICE)
	fromAB, fromBA   string        // where a's endpoint for b came from, and b's for a
	pathSeen         string
}

// Host roles of the grid.
const (
	kindPublic = "public"
	kindStock  = "stock"
	kindRandom = "random-fully"
	kindIdeal  = "ideal EIM"
	kindSame   = "same router"
)

// TestNAT is the acceptance of issue 12 (and of issue 8 before it) in one
// bed: the grid {public, stock masquerade, stock random-fully, ideal EIM}²
// plus two peers behind one stock router, every cell pinged both ways,
// for both key orders (1); a router's conntrack flushed mid-transfer and a
// pair idle past the UDP timeout that then sends from the public side (2);
// forged STUN and forged relay frames (3).
//
// Hosts: two of each kind, every NATed one behind a router of its own
// (the same-router pair shares one stock router). Every NATed host dials
// both public hosts, so every pair has a relay in common. Keys are chosen
// so that each cross-kind cell appears twice with opposite key orders:
// ranks P1 < S1 < R1 < I1 < T1 < T2 < I2 < R2 < S2 < P2, so X1 < Y1 and
// X2 > Y2 for kinds X before Y. In every cell the first kind's host sends
// the first ping (public first: the case that failed in issue 12).
//
// Direct is asserted where the NATs allow it whichever side sends first:
//   - public ↔ anything: the NATed side's datagrams reach the public one,
//     which learns the mapping they came from (WireGuard roaming and
//     authenticated probes); nothing has to be guessed.
//   - ideal EIM ↔ ideal EIM: one fixed mapping per host and no race, so
//     ICE's server-reflexive candidates meet.
//   - same router: ICE's host candidates on the LAN.
//   - stock ↔ ideal EIM: the pair takes turns sending first (package
//     reach, opening turns); in the turn where the stock side sends first
//     (the first for one key order, the second, ~52 s in, for the other),
//     the ideal side waits for its word, then answers, and its datagrams
//     arrive as replies. That needs the stock host's flow to leave from
//     the mapping it advertised: Linux gives a new flow the port of the
//     source's newest mapping, so a stock host that answered in another
//     peer's turn (its flow towards that peer spoiled, a random port) used
//     to send from that random port to everyone after; told by the peers'
//     probes that its NAT takes their datagrams in (ICMP port
//     unreachable), it now keeps quiet in their turns.
//
// Everything else must reach (relayed at worst) and is reported as seen.
// random-fully gives every destination a new port nobody can predict,
// and stock masquerade's mapping is spoiled whenever the other side's
// datagram reaches the router first (issue 12, point 3): two stock routers
// meet only if both first datagrams cross in flight, which the bed's
// sub-millisecond underlay never allows, and the replacement port is
// random and seen only by the far router, which drops it (conntrack
// tables and reasoning in docs/architecture.md, NAT traversal, Limits).
func TestNAT(t *testing.T) {
	needTool(t, "ping", "nft")
	b := newBed(t, testbed.Options{LogLevel: "info"})
	keys, err := testbed.OrderedKeys(10)
	if err != nil {
		t.Fatal(err)
	}
	// Rank (index into keys) per host, see above.
	const (
		rP1, rS1, rR1, rI1, rT1, rT2, rI2, rR2, rS2, rP2 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
	)
	withKey := func(h *testbed.Host, rank int) *testbed.Host {
		if err := h.SetKey(keys[rank]); err != nil {
			t.Fatal(err)
		}
		return h
	}
	p1 := withKey(b.AddHost(testbed.HostOptions{NoPeers: true, NoLaunch: true}), rP1)
	p1.Launch()
	p2 := withKey(b.AddHost(testbed.HostOptions{Peers: []string{p1.UnderlayIP}, NoLaunch: true}), rP2)
	p2.Launch()
	public := []string{p1.UnderlayIP, p2.UnderlayIP}
	behind := func(kind testbed.NATKind, octet, index, rank int) (*testbed.NAT, *testbed.Host) {
		n := b.AddNAT(kind, octet, index)
		return n, withKey(b.AddHostBehind(n, testbed.HostOptions{Peers: public, NoLaunch: true}), rank)
	}
	nS1, s1 := behind(testbed.NATStock, 101, 0, rS1)
	nS2, s2 := behind(testbed.NATStock, 102, 1, rS2)
	nR1, r1 := behind(testbed.NATStockRandom, 103, 2, rR1)
	nR2, r2 := behind(testbed.NATStockRandom, 104, 3, rR2)
	nI1, i1 := behind(testbed.NATIdealEIM, 105, 4, rI1)
	nI2, i2 := behind(testbed.NATIdealEIM, 106, 5, rI2)
	nT, t1 := behind(testbed.NATStock, 107, 6, rT1)
	t2 := withKey(b.AddHostBehind(nT, testbed.HostOptions{Peers: public, NoLaunch: true}), rT2)
	nated := []*testbed.Host{s1, s2, r1, r2, i1, i2, t1, t2}
	var wg sync.WaitGroup
	for _, h := range nated {
		wg.Go(h.Launch)
	}
	wg.Wait()
	hosts := append([]*testbed.Host{p1, p2}, nated...)
	router := map[*testbed.Host]*testbed.NAT{s1: nS1, s2: nS2, r1: nR1, r2: nR2, i1: nI1, i2: nI2, t1: nT, t2: nT}
	role := map[*testbed.Host]string{p1: kindPublic, p2: kindPublic, s1: kindStock, s2: kindStock,
		r1: kindRandom, r2: kindRandom, i1: kindIdeal, i2: kindIdeal, t1: kindSame, t2: kindSame}
	for _, h := range hosts {
		t.Logf("%s: %s at %s", h.Name, role[h], h.UnderlayIP)
	}

	pairs := [][2]*testbed.Host{
		{p1, p2}, {p1, s1}, {p2, s2}, {p1, r1}, {p2, r2}, {p1, i1}, {p2, i2},
		{s1, s2}, {s1, r1}, {s2, r2}, {s1, i1}, {s2, i2},
		{r1, r2}, {r1, i1}, {r2, i2},
		{i1, i2}, {t1, t2},
	}
	var cells []*natCell
	for _, p := range pairs {
		c := &natCell{row: role[p[0]], col: role[p[1]], a: p[0], b: p[1]}
		c.wantDirect, c.why = expectDirect(c.row, c.col)
		cells = append(cells, c)
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

	// One container per host.
	ctrs := map[*testbed.Host]*testbed.Container{}
	var mu sync.Mutex
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
	// The clock starts once every container answers its own host (a veth
	// just put on the bridge forwards only once the kernel has seen its
	// carrier, up to a second or two later) and every host routes every
	// other host's container into the tunnel: neither is a NAT's doing.
	for _, h := range hosts {
		wg.Go(func() {
			if err := testbed.Poll(t, 30*time.Second, fmt.Sprintf("%s reaches its own container", h), func() error {
				_, err := h.Exec("ping", "-c", "1", "-W", "1", "-n", "-q", ctrs[h].Addr)
				return err
			}); err != nil {
				t.Error(err)
			}
			for _, o := range hosts {
				if o == h {
					continue
				}
				if err := testbed.Poll(t, 30*time.Second, fmt.Sprintf("%s routes %s's container", h, o), func() error {
					out, err := h.Exec("ip", "route", "get", ctrs[o].Addr)
					if err != nil || !strings.Contains(out, "dev weavewg0") {
						return fmt.Errorf("route: %s", strings.TrimSpace(out))
					}
					return nil
				}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Whether each pair already had a WireGuard session when the pings
	// start (the daemons' keepalives and probes run from launch on), for
	// reading the first-reply times.
	pre := statuses(hosts)
	session := func(a, b *testbed.Host) string {
		for _, c := range testbed.ConnsTo(pre[a], b.Name) {
			if c.LastHandshake != nil {
				return "session"
			}
		}
		return "no session"
	}
	sessions := map[*natCell]string{}
	for _, c := range cells {
		sessions[c] = session(c.a, c.b) + "/" + session(c.b, c.a)
	}
	start := time.Now()

	// Every cell, both ways, a first: the first reply within 5 s.
	for _, c := range cells {
		wg.Go(func() {
			c.firstAB, c.errAB = ctrs[c.a].FirstReply(ctrs[c.b].Addr, 5*time.Second)
			c.firstBA, c.errBA = ctrs[c.b].FirstReply(ctrs[c.a].Addr, 5*time.Second)
		})
	}
	wg.Wait()

	// Then watch the paths: one status poll per host per round, for
	// long enough for a pair's second opening turn (reach.OpenFor +
	// reach.QuietFor after the peers met, then ICE): each stock ↔ ideal
	// cell has had its stock side's first turn by then. An attempt can
	// still fail on timing alone (once in some 25 runs a stock ↔ ideal
	// cell was still relayed at 90 s; its log is lost, and 13 runs since,
	// at loads up to 17, went direct in the first stock-first turn): the
	// product then tries again two turns later, so a cell still pending
	// at 90 s is watched through its next stock-first turn, and the grid
	// shows how long it took.
	deadline := time.Now().Add(90 * time.Second)
	retryDeadline := time.Now().Add(3*(reach.OpenFor+reach.QuietFor) + reach.OpenFor + 10*time.Second)
	retried := false
	lastPing := time.Now()
	for {
		if !time.Now().Before(deadline) {
			if retried || !pendingDirect(cells) {
				break
			}
			retried, deadline = true, retryDeadline
			t.Logf("at 90 s some cells that must go direct are still relayed: watching them through their next stock-first opening turn")
			sts := statuses(hosts)
			for _, c := range cells {
				if c.wantDirect && !c.direct {
					logPaths(t, c, sts, router)
				}
			}
		}
		// A pair that carries no data for a minute goes idle (issue 18):
		// parked on its relay, no ICE, its turns started afresh when data
		// wakes it. The second opening turn comes ~52 s in, so the cells
		// still waiting for a direct path carry a ping every 15 s, as a
		// pair in use would.
		if time.Since(lastPing) > 15*time.Second {
			lastPing = time.Now()
			for _, c := range cells {
				if c.wantDirect && !c.direct {
					go ctrs[c.a].Exec("ping", "-c", "1", "-W", "1", "-n", "-q", ctrs[c.b].Addr)
				}
			}
		}
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
				c.fromAB, c.fromBA = endpointFrom(sts[c.a], c.b.Name), endpointFrom(sts[c.b], c.a.Name)
				continue
			}
			if c.wantDirect {
				pending++
			}
		}
		// Cells that may go direct get a fair chance to before the grid
		// is drawn.
		if pending == 0 && time.Since(start) > 30*time.Second {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}

	// The grid, then the assertions.
	sts := statuses(hosts)
	var sb strings.Builder
	sb.WriteString("\nfirst reply a→b / b→a, then the path (a sends first; keys a<b in the first cell of a kind pair, a>b in the second)\n")
	for _, c := range cells {
		order := "a<b"
		if keyLess(sts[c.b], sts[c.a]) {
			order = "a>b"
		}
		fmt.Fprintf(&sb, "  %-12s ↔ %-12s %-3s–%-3s %s  %s / %s  %-40s before: %s\n", c.row, c.col, c.a, c.b, order,
			replyText(c.firstAB, c.errAB), replyText(c.firstBA, c.errBA), c.text(), sessions[c])
	}
	sb.WriteString("\nexpected path per kind pair (asserted where direct):\n")
	seenPair := map[string]bool{}
	for _, c := range cells {
		k := c.row + " ↔ " + c.col
		if seenPair[k] {
			continue
		}
		seenPair[k] = true
		want := "may stay relayed"
		if c.wantDirect {
			want = "direct"
		}
		fmt.Fprintf(&sb, "  %-29s %-16s %s\n", k, want, c.why)
	}
	// Handshake messages each host sent again because they went
	// unanswered (a cold start's lost handshakes, recovered), and crossing
	// initiations it resolved by dropping the peer's.
	sb.WriteString("\nhandshake messages sent again / crossing initiations dropped (tunnel/handshake.go):")
	for _, h := range hosts {
		fmt.Fprintf(&sb, " %s %d/%d", h.Name, sts[h].Counters[tunnel.CounterHandshakeRetransmits], sts[h].Counters[tunnel.CounterHandshakeCrossedDropped])
	}
	sb.WriteString("\n\nNAT behaviour as observed:\n")
	for _, h := range hosts {
		fmt.Fprintf(&sb, "  %-3s %-12s %s\n", h.Name, role[h], natText(sts[h].NAT))
	}
	t.Log(sb.String())
	for _, c := range cells {
		if c.errAB != nil {
			t.Errorf("%s↔%s (%s→%s, first): %v", c.row, c.col, c.a, c.b, c.errAB)
		}
		if c.errBA != nil {
			t.Errorf("%s↔%s (%s→%s): %v", c.col, c.row, c.b, c.a, c.errBA)
		}
		// Issue 12: the first ping from a public host's container to a
		// NATed host's container is answered within 2 s.
		if c.row == kindPublic && c.col != kindPublic && c.errAB == nil && c.firstAB > 2*time.Second {
			t.Errorf("%s↔%s (%s→%s, first, from the public side): first reply after %.1fs, want within 2 s", c.row, c.col, c.a, c.b, c.firstAB.Seconds())
		}
		if c.wantDirect && !c.direct {
			t.Errorf("%s↔%s (%s–%s): want direct, path is %s", c.row, c.col, c.a, c.b, c.pathSeen)
			logPaths(t, c, sts, router)
		}
	}
	if n := sts[r1].NAT; n == nil || !n.VariesPerDestination {
		t.Errorf("%s behind random-fully: observed %s, want a mapping that varies per destination", r1, natText(n))
	}
	if n := sts[i1].NAT; n == nil || n.VariesPerDestination || n.Public || len(n.Mappings) < 2 {
		t.Errorf("%s behind an ideal EIM NAT: observed %s, want one mapping for every destination", i1, natText(n))
	}
	if n := sts[p2].NAT; n == nil || !n.Public {
		t.Errorf("%s public: observed %s", p2, natText(n))
	}
	if t.Failed() {
		return
	}

	t.Run("flush mid-transfer", func(t *testing.T) {
		// public → stock: the router forgets its mappings while a ping
		// runs; the public side's datagrams to the old mapping arrive
		// first and take its tuple, so the NATed side's next datagrams
		// leave from another port, which the public side must learn.
		ping, err := ctrs[p1].StartPing(ctrs[s1].Addr, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		before := endpointOf(testbed.ConnsTo(p1.Status(), s1.Name))
		if err := nS1.FlushMappings(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(8 * time.Second)
		replies, gap := ping.Stop()
		after := endpointOf(testbed.ConnsTo(p1.Status(), s1.Name))
		t.Logf("endpoint of %s at %s: %s before the flush, %s after; ping: %d replies, longest gap %v", s1, p1, before, after, replies, gap)
		if gap > 5*time.Second {
			t.Errorf("traffic stopped for %v after the flush, want resumed within 5 s", gap)
		}
	})

	t.Run("idle past the timeout, public side sends", func(t *testing.T) {
		// The containers stay quiet; the end of the UDP mappings (as after
		// more than the router's UDP timeout with nothing sent) is made by
		// deleting the router's UDP conntrack entries rather than waiting
		// 30–120 s: the router is not tuned. TCP entries (the control
		// connections) live for days and stay. Then the public side
		// sends first.
		if err := nS1.ExpireUDPMappings(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		took, err := ctrs[p1].FirstReply(ctrs[s1].Addr, 5*time.Second)
		t.Logf("%s → %s after the mapping was forgotten: first reply in %.1fs", p1, s1, took.Seconds())
		if err != nil {
			t.Error(err)
		}
	})

	node := b.AddNode(200)
	t.Run("forged STUN", func(t *testing.T) { forgedSTUN(t, node, p2, s2, ctrs) })
	t.Run("forged relay frames", func(t *testing.T) { forgedRelay(t, b, node, p2, s2, ctrs) })
}

// expectDirect says whether NAT kinds row and col let a pair go direct
// whichever side sends first, and why (the reasoning of TestNAT's comment
// and docs/architecture.md, NAT traversal, Limits).
func expectDirect(row, col string) (bool, string) {
	has := func(k string) bool { return row == k || col == k }
	switch {
	case row == kindPublic && col == kindPublic:
		return true, "no NAT on either side"
	case has(kindPublic):
		return true, "the NATed side's datagrams reach the public side, which learns the mapping they came from"
	case row == kindSame:
		return true, "ICE's host candidates on the shared LAN"
	case row == kindIdeal && col == kindIdeal:
		return true, "one fixed mapping each, unsolicited datagrams dropped before conntrack: server-reflexive candidates meet"
	case row == kindStock && col == kindIdeal:
		return true, "in the turn where the stock side sends first (the first or the second, by key order) the ideal side answers after its word; the stock host keeps quiet in others' turns once told its NAT takes datagrams in, so its flows keep the mapping it advertised"
	case has(kindRandom):
		return false, "random-fully gives each destination a new random port nobody can predict, and the far NAT filters by port"
	case row == kindStock && col == kindStock:
		return false, "each router takes the other's first datagram as unsolicited (an unreplied entry) and gives its own host's flow a random other port"
	}
	return false, "not a kind pair of the grid"
}

func keyLess(a, b *api.Status) bool {
	sa, sb := testbed.Self(a), testbed.Self(b)
	if sa == nil || sb == nil {
		return false
	}
	ka, _ := key.ParsePublic(sa.PublicKey)
	kb, _ := key.ParsePublic(sb.PublicKey)
	return ka.Less(kb)
}

func replyText(d time.Duration, err error) string {
	if err != nil {
		return "none"
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// forgedSTUN sends p STUN that must not reach an ICE agent: counted, and
// n's endpoint at p does not move.
func forgedSTUN(t *testing.T, node string, p, n *testbed.Host, ctrs map[*testbed.Host]*testbed.Container) {
	directNow(t, p, n, ctrs)
	dst := netip.MustParseAddrPort(p.UnderlayIP + ":6783")
	src := netip.MustParseAddrPort("192.0.2.200:40000")
	// n's current address as p sees it, to spoof.
	spoof := src
	if ep, err := netip.ParseAddrPort(endpointOf(testbed.ConnsTo(p.Status(), n.Name))); err == nil {
		spoof = ep
	}
	before := p.Status()
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
		{"answer nobody asked for, spoofed", spoof, stunMsg(0x0101, tx(3), []byte{0, 0x20, 0, 8, 0, 1, 0x3b, 0x6d, 0xe1, 0x12, 0xa6, 0x43}), "nat_stun_unknown_transaction"},
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
		after = p.Status()
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
	if e0, e1 := endpointOf(testbed.ConnsTo(before, n.Name)), endpointOf(testbed.ConnsTo(after, n.Name)); e0 != e1 {
		t.Errorf("%s's endpoint moved from %s to %s", n, e0, e1)
	}
	if err := ctrs[n].PingEventually(ctrs[p].Addr, 10*time.Second); err != nil {
		t.Error(err)
	}
	// Direct still (or again within the probes' 5 s, should the pair have
	// gone idle and been parked on its relay meanwhile).
	testbed.Eventually(t, 10*time.Second, fmt.Sprintf("%s→%s path direct after forged STUN", p, n), func() error {
		if pa := testbed.PathTo(p.Status(), n.Name); pa != "direct" {
			return fmt.Errorf("path %q", pa)
		}
		return nil
	})
}

// forgedRelay sends p relay frames and probes that must be dropped (issue
// 12, acceptance 3): a non-member's data frame in n's name, one claiming to
// be forwarded by a relay from a non-member's address, a real probe of n's
// with a wrong hop MAC (from elsewhere and from n's own address), and the
// real probe captured and replayed from elsewhere. Each is counted, and n's
// endpoint at p never moves.
func forgedRelay(t *testing.T, b *testbed.Bed, node string, p, n *testbed.Host, ctrs map[*testbed.Host]*testbed.Container) {
	needTool(t, "tcpdump")
	dst := netip.MustParseAddrPort(p.UnderlayIP + ":6783")
	stranger := netip.MustParseAddrPort("192.0.2.200:40001")
	directNow(t, p, n, ctrs)
	ep0 := endpointOf(testbed.ConnsTo(p.Status(), n.Name))
	nAddr, err := netip.ParseAddrPort(ep0)
	if err != nil {
		t.Fatalf("%s's endpoint at %s: %q", n, p, ep0)
	}
	// One real direct probe of n to p, off the wire: relay magic, version 2, type 1 (probe), hop limit 1.
	out, err := exec.Command("ip", "netns", "exec", b.Underlay, "timeout", "10", "tcpdump", "-i", "br0", "-n", "-c", "1", "-w", "-",
		fmt.Sprintf("udp and src host %s and dst host %s and dst port 6783 and udp[8:4] = 0xf7020101", nAddr.Addr(), p.UnderlayIP)).Output()
	if err != nil {
		t.Fatalf("capturing a probe of %s: %v", n, err)
	}
	real, err := udpPayloadOfPcap(out)
	if err != nil {
		t.Fatal(err)
	}
	idOf := func(st *api.Status) []byte {
		k, _ := key.ParsePublic(testbed.Self(st).PublicKey)
		id := tunnel.PeerIDOf(k)
		return id[:]
	}
	pst, nst := p.Status(), n.Status()
	// A version-2 header (tunnel/relay.go): hop byte, IDs, then the hop
	// counter and MAC a non-member cannot make (zero here).
	hdr := func(typ, hop byte) []byte {
		h := []byte{0xF7, 2, typ, hop}
		h = append(h, idOf(pst)...)
		h = append(h, idOf(nst)...)
		return append(h, make([]byte, 16)...)
	}
	wrongMAC := bytes.Clone(real)
	wrongMAC[tunnel.RelayHeaderLen-1] ^= 0xff // the hop MAC's last byte
	wrongMAC[tunnel.RelayHeaderLen] ^= 1      // and another timestamp
	data := func(hop byte) []byte {
		d := append(hdr(0, hop), 4, 0, 0, 0)
		return append(d, make([]byte, 28)...)
	}
	forged := []struct {
		name    string
		from    netip.AddrPort
		pkt     []byte
		counter string
	}{
		{"data frame in n's name from a non-member", stranger, data(16), "udp_relay_dropped_bad_mac"},
		{"data frame 'forwarded' from a non-member's address", stranger, data(0x80 | 15), "udp_relay_dropped_unknown_source"},
		{"probe in n's name, wrong MAC, from a non-member", stranger, wrongMAC, "udp_relay_dropped_bad_mac"},
		{"probe in n's name, wrong MAC, from n's address", nAddr, wrongMAC, "udp_relay_dropped_bad_mac"},
		{"n's real probe replayed from a non-member", stranger, real, "udp_relay_dropped_replayed"},
	}
	before := p.Status()
	want := map[string]uint64{}
	for _, f := range forged {
		for range 3 {
			if err := testbed.SendRawUDP(node, f.from, dst, f.pkt); err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
		}
		want[f.counter] += 3
	}
	var after *api.Status
	testbed.Eventually(t, 10*time.Second, "forged relay frames counted", func() error {
		after = p.Status()
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
	if e := endpointOf(testbed.ConnsTo(after, n.Name)); e != ep0 {
		t.Errorf("%s's endpoint moved from %s to %s", n, ep0, e)
	}
	if c := after.Counters["udp_relay_endpoints_learned"] - before.Counters["udp_relay_endpoints_learned"]; c != 0 {
		t.Errorf("%d endpoints learned from forged frames", c)
	}
	if err := ctrs[p].PingEventually(ctrs[n].Addr, 10*time.Second); err != nil {
		t.Error(err)
	}
}

// directNow makes sure p's path to n is direct before a subtest reads its
// endpoint: the grid's pings are a minute old by then, and a public host
// parks an idle pair whose endpoint is a NAT mapping on its relay (issue
// 18) until data wakes it and probes answer (DeadAfter).
func directNow(t *testing.T, p, n *testbed.Host, ctrs map[*testbed.Host]*testbed.Container) {
	t.Helper()
	if err := ctrs[n].PingEventually(ctrs[p].Addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 15*time.Second, fmt.Sprintf("%s→%s path direct", p, n), func() error {
		if pa := testbed.PathTo(p.Status(), n.Name); pa != "direct" {
			return fmt.Errorf("path %q", pa)
		}
		return nil
	})
}

// udpPayloadOfPcap is the UDP payload of the first packet of a classic
// pcap of Ethernet frames carrying IPv4.
func udpPayloadOfPcap(b []byte) ([]byte, error) {
	const global, record, eth = 24, 16, 14
	if len(b) < global+record+eth+20+8 {
		return nil, fmt.Errorf("pcap of %d bytes: no packet", len(b))
	}
	capLen := int(binary.LittleEndian.Uint32(b[global+8:]))
	f := b[global+record:]
	if capLen > len(f) {
		return nil, fmt.Errorf("pcap: truncated record")
	}
	f = f[:capLen]
	ihl := int(f[eth]&0x0f) * 4
	if len(f) < eth+ihl+8 {
		return nil, fmt.Errorf("pcap: short frame")
	}
	return bytes.Clone(f[eth+ihl+8:]), nil
}

// logPaths logs both sides' paths of c, and their routers' UDP conntrack:
// what tells why a pair stayed relayed.
func logPaths(t *testing.T, c *natCell, sts map[*testbed.Host]*api.Status, router map[*testbed.Host]*testbed.NAT) {
	t.Helper()
	for _, pair := range [][2]*testbed.Host{{c.a, c.b}, {c.b, c.a}} {
		for _, cn := range testbed.ConnsTo(sts[pair[0]], pair[1].Name) {
			t.Logf("%s's path to %s: endpoint %s from %s, why %q, ice %s", pair[0], pair[1], cn.Endpoint, cn.EndpointFrom, cn.PathWhy, cn.ICE)
		}
	}
	for _, h := range []*testbed.Host{c.a, c.b} {
		if n := router[h]; n != nil {
			t.Logf("%s's router %s, UDP conntrack:\n%s", h, n.WANIP, n.UDPMappings())
		}
	}
}

// pendingDirect reports whether a cell that must go direct is not yet.
func pendingDirect(cells []*natCell) bool {
	for _, c := range cells {
		if c.wantDirect && !c.direct {
			return true
		}
	}
	return false
}

func (c *natCell) text() string {
	if !c.direct {
		return "relayed"
	}
	s := fmt.Sprintf("direct %.1fs", c.took.Seconds())
	if c.typeAB != "" {
		return s + " (ice " + c.typeAB + ")"
	}
	// Each side's endpoint for the other and where it came from: a
	// public host learns a NATed one's mapping from its traffic (or the
	// reflexive address it advertised), never from gossip's listen port.
	return fmt.Sprintf("%s (endpoints from %s / %s)", s, c.fromAB, c.fromBA)
}

// endpointFrom is where st's endpoint for nick came from (gossip,
// reflexive, ice, traffic).
func endpointFrom(st *api.Status, nick string) string {
	for _, c := range testbed.ConnsTo(st, nick) {
		if c.EndpointFrom != "" {
			return c.EndpointFrom
		}
	}
	return "?"
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
