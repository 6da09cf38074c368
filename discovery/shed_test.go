package discovery

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// A joiner whose only endpoint is a peer at its limit, in a mesh where
// every peer is at its limit, gets its first connection from that peer,
// which closes one of its own to a neighbour it still reaches another
// way; the joiner's second goes to that neighbour, which has room now.
// The joiner used to walk referrals from full peer to full peer, two a
// tick (49 refusals, 23 s for the 1,000th join in simulation), and here,
// with no peer having room, it never connected at all. Five peers with a
// limit of 4 (connWant 2) form a full mesh through targets, all dialling
// a; c joins through a.
func TestFullPeerTakesAJoinerByShedding(t *testing.T) {
	limit := func(c *Config, _ *tunables) { c.ConnLimit = 4 }
	var mesh []*testRouter
	for _, name := range []string{"a", "b", "d", "e", "f"} {
		mesh = append(mesh, newTestRouter(t, name, limit))
	}
	for i := range mesh {
		for j := range i {
			if err := mesh[i].Connect(mesh[j].addr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	direct := func(r *testRouter) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.active)
	}
	reachAll := func(rs []*testRouter) bool {
		for _, r := range rs {
			if len(r.Reachable()) != len(rs) {
				return false
			}
		}
		return true
	}
	waitFor(t, 10*time.Second, "a full mesh of five at their limit", func() bool {
		for _, r := range mesh {
			if direct(r) != 4 {
				return false
			}
		}
		return reachAll(mesh)
	})
	a := mesh[0]
	c := newTestRouter(t, "c", limit)
	if err := c.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	all := append([]*testRouter{c}, mesh...)
	waitFor(t, 10*time.Second, "the joiner connected to a and to the peer a shed, everyone reaching everyone", func() bool {
		rc, ok := c.ReachOf(a.Self())
		return ok && rc.Direct && direct(c) == 2 && reachAll(all)
	})
	sheds := func() string {
		var b strings.Builder
		for _, r := range all {
			fmt.Fprintf(&b, " %s %d (%d connections)", r.cfg.Nickname, r.Counters()[CtrConnShed], direct(r))
		}
		return b.String()
	}
	for _, r := range all {
		if n := direct(r); n > 4 {
			t.Fatalf("%s holds %d connections, over its limit of 4", r.cfg.Nickname, n)
		}
		if got, want := r.Counters()[CtrConnShed], map[bool]uint64{true: 1}[r == a]; got != want {
			t.Fatalf("sheds for one joiner:%s; want a's one alone", sheds())
		}
	}
	// Nobody sheds again in a still mesh, nor redials the peer that
	// shed it.
	ticks := func() uint64 { return a.Counters()[CtrAntiEntropy] }
	t0 := ticks()
	waitFor(t, 30*time.Second, "a's anti-entropy rounds", func() bool { return ticks() >= t0+5 })
	for _, r := range all {
		if got, want := r.Counters()[CtrConnShed], map[bool]uint64{true: 1}[r == a]; got != want {
			t.Fatalf("sheds in a still mesh:%s; want a's one alone", sheds())
		}
	}
	if !reachAll(all) {
		t.Fatal("the mesh came apart after the shed")
	}
}

// Which connection a peer at its limit closes to take a dialler, and
// when it refers the dialler instead: only for a peer it does not reach
// (a peer in the mesh finds peers with room through it), only a
// neighbour holding more than connWant (it would dial to make up the
// loss, or fall under it if a second peer shed it too), never one of its
// own targets (the user asked for it), never an edge whose loss would cut
// the mesh, and at most one a tick. Self (0) is at its limit of 4
// (connWant 2) with neighbours 1-4:
//
//	1: 0, 5, 6, 12       (linked back through 5-2)
//	2: 0, 5, 7, 8, 13    (the most connections)
//	3: 0, 9, 10, 14      (9, 10, 14 hang off 3 alone: 0-3 is a cut edge)
//	4: 0, 11, 15         (connWant+1)
//
// then 1 loses 5 (0-1 a cut edge too), gets it back, 2 is shed, and 1
// is linked back through 6-11-4 instead.
func TestShedCandidate(t *testing.T) {
	r, err := New(Config{Private: newKey(t), Secret: testSecret, ConnLimit: 4, Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := newMeshView(16)
	m.ks[0] = r.self
	edges := [][2]int{{1, 5}, {1, 6}, {1, 12}, {2, 5}, {2, 7}, {2, 8}, {2, 13}, {3, 9}, {3, 10}, {3, 14}, {9, 10}, {4, 11}, {4, 15}}
	for _, e := range edges {
		m.nb[e[0]][e[1]], m.nb[e[1]][e[0]] = true, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	conns := map[int]*conn{}
	for i := 1; i <= 4; i++ {
		m.nb[0][i], m.nb[i][0] = true, true
		a, _ := net.Pipe()
		c := &conn{r: r, nc: a, peer: m.ks[i], done: make(chan struct{})}
		r.conns[c] = struct{}{}
		if err := r.addConnLocked(c); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	r.publishNeighborsLocked()
	merge := func(is ...int) {
		for _, i := range is {
			r.mergeRecordsLocked(nil, []Record{*m.record(i)}, []sigCheck{sigGood})
		}
		r.freshLocked()
	}
	merge(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
	stranger := newKey(t).Public()
	now := r.now()
	want := func(what string, dialler key.Public, at time.Time, wantK int) {
		t.Helper()
		k, ok := r.shedCandidateLocked(dialler, at)
		switch {
		case wantK == 0 && ok:
			t.Fatalf("%s: would shed %s, want a referral", what, k.Name())
		case wantK != 0 && !ok:
			t.Fatalf("%s: would refer the dialler, want neighbour %d shed", what, wantK)
		case wantK != 0 && k != m.ks[wantK]:
			t.Fatalf("%s: would shed %s, want neighbour %d", what, k.Name(), wantK)
		}
	}
	want("a stranger", stranger, now, 2)
	want("a peer we reach (5)", m.ks[5], now, 0)
	conns[2].target = &target{}
	want("neighbour 2 one of our targets", stranger, now, 1)
	// 1 linked back only through 0 now: 0-1, like 0-3, is a cut edge,
	// and 4 holds too few.
	delete(m.nb[1], 5)
	delete(m.nb[5], 1)
	merge(1, 5)
	want("no neighbour linked another way but our target", stranger, now, 0)
	conns[2].target = nil
	m.nb[1][5], m.nb[5][1] = true, true
	merge(1, 5)
	if !r.shedLocked(stranger) {
		t.Fatal("shedLocked found nothing to shed for a stranger")
	}
	if r.active[m.ks[2]] != nil || len(r.active) != 3 {
		t.Fatalf("shedLocked: %d connections left, neighbour 2's among them: %v", len(r.active), r.active[m.ks[2]] != nil)
	}
	// Back at the limit (the stranger's connection would be added now).
	a, _ := net.Pipe()
	c := &conn{r: r, nc: a, peer: stranger, done: make(chan struct{})}
	r.conns[c] = struct{}{}
	if err := r.addConnLocked(c); err != nil {
		t.Fatal(err)
	}
	r.publishNeighborsLocked()
	// 2 gone, 1 is linked back through 6-11-4 only.
	m.nb[6][11], m.nb[11][6] = true, true
	merge(6, 11)
	other := newKey(t).Public()
	want("a second stranger within a tick of the shed", other, r.lastShed.Add(r.tun.tick/2), 0)
	want("a second stranger a tick after the shed", other, r.lastShed.Add(r.tun.tick), 1)
}
