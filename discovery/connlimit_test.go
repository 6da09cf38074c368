package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// A peer under half its limit whose candidates can all not be dialled
// (here: no address known, one backing off) reads every record once,
// then not again each tick until something it read changes (a record,
// a route, a connection, a dial's end), a backoff ends, or dialRecheck
// passes: the pass over every record each second was O(N) per such
// peer per second (issue 18).
func TestGossipDialsSkipWhileNothingChanged(t *testing.T) {
	r, err := New(Config{Private: newKey(t), Secret: testSecret, Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const n = 40
	var recs []Record
	for i := range n {
		recs = append(recs, Record{Key: seqKey(byte(i + 1)), Version: 5, Nickname: "p"})
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mergeRecordsLocked(nil, recs, make([]sigCheck, n))
	r.freshLocked() // not later, on the recompute timer, in the middle of the test
	t0 := time.Now()
	backingOff := seqKey(3)
	r.dials[backingOff] = &gossipDial{next: t0.Add(2500 * time.Millisecond), backoff: time.Second}
	passes := func(at time.Duration) uint64 {
		r.gossipDialsLocked(t0.Add(at))
		return r.dialPasses
	}
	if got := passes(0); got != 1 {
		t.Fatalf("first tick: %d passes over the records, want 1", got)
	}
	for _, at := range []time.Duration{time.Second, 2 * time.Second} {
		if got := passes(at); got != 1 {
			t.Fatalf("tick at %v with nothing changed: %d passes, want still 1", at, got)
		}
	}
	if got := passes(3 * time.Second); got != 2 {
		t.Fatalf("tick after a backoff ended: %d passes, want 2", got)
	}
	if got := passes(4 * time.Second); got != 2 {
		t.Fatalf("tick at 4 s with nothing changed: %d passes, want still 2", got)
	}
	newer := recs[7]
	newer.Version++
	r.mergeRecordsLocked(nil, []Record{newer}, []sigCheck{sigGood})
	r.freshLocked()
	if got := passes(5 * time.Second); got != 3 {
		t.Fatalf("tick after a record changed: %d passes, want 3", got)
	}
	if got := passes(6 * time.Second); got != 3 {
		t.Fatalf("tick at 6 s with nothing changed: %d passes, want still 3", got)
	}
	if got := passes(5*time.Second + dialRecheck); got != 4 {
		t.Fatalf("tick dialRecheck after the last pass: %d passes, want 4", got)
	}
	// A referral that gives addresses with no record changing (a full
	// peer whose record we took before its neighbours' records) makes
	// them candidates: the next tick passes again, not dialRecheck later.
	referrer := recs[0]
	referrer.Version++
	for i := 1; i < 4; i++ {
		referrer.Neighbors = append(referrer.Neighbors, Neighbor{Key: recs[i].Key, IP: netipMust("192.0.2.1"), Established: true})
	}
	r.mergeRecordsLocked(nil, []Record{referrer}, []sigCheck{sigGood})
	r.freshLocked()
	for i := 1; i < 4; i++ {
		r.recs[recs[i].Key].lastIP = netip.Addr{} // as if they came after it
	}
	at := 6*time.Second + dialRecheck
	if got := passes(at); got != 5 {
		t.Fatalf("tick after a record changed: %d passes, want 5", got)
	}
	if got := passes(at + time.Second); got != 5 {
		t.Fatalf("tick with nothing changed: %d passes, want still 5", got)
	}
	r.mu.Unlock()
	r.learnReferralAddrs(referrer.Key)
	r.mu.Lock()
	if got := passes(at + 2*time.Second); got != 6 {
		t.Fatalf("tick after a referral gave addresses: %d passes, want 6", got)
	}
}

// A joiner dials the rest of its connections as soon as it reaches the
// mesh through its first one, not at its next maintenance tick: the
// record versions of a join (its peers' and its own) then go out within a
// few hundred milliseconds of each other and travel together, where a
// tick up to a second later made them a second wave of haves, wants and
// records through the whole mesh. The joiner's tick here is an hour; the
// others are at half their limit (3), so only the joiner dials.
func TestJoinerDialsWithoutWaitingForItsTick(t *testing.T) {
	limit := func(c *Config, _ *tunables) { c.ConnLimit = 3 }
	a := newTestRouter(t, "a", limit)
	b := newTestRouter(t, "b", limit)
	d := newTestRouter(t, "d", limit)
	if err := b.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	if err := d.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	direct := func(r *testRouter) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.active)
	}
	waitFor(t, 10*time.Second, "a mesh of three", func() bool { return direct(a) == 2 && direct(b) == 2 && direct(d) == 2 })
	c := newTestRouter(t, "c", limit, withTuning(func(tu *tunables) { tu.tick = time.Hour }))
	if err := c.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the joiner's second connection", func() bool { return direct(c) == 2 })
}

// A target that refused us at its connection limit is satisfied while we
// reach it through the mesh and it is as full as when it refused, even
// with fewer connections than gossip dials aim for: a joiner whose
// bootstrap peer was full redialled it for good, a handshake and a
// referral each time (152 a minute in a still mesh of 300 simulated
// routers). Here a's limit is 1 and b holds it; c, joining through a,
// reaches it through b.
func TestFullTargetReachedThroughTheMeshIsSatisfied(t *testing.T) {
	a := newTestRouter(t, "a", func(c *Config, _ *tunables) { c.ConnLimit = 1 })
	b := newTestRouter(t, "b")
	if err := b.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b connected to a", func() bool { return len(a.Reachable()) == 2 })
	c := newTestRouter(t, "c")
	if err := c.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "c's target a satisfied through b", func() bool {
		for _, cs := range c.Connections() {
			if cs.Addr == a.addr() {
				return cs.Peer == a.Self() && cs.State == StateEstablished && len(c.Reachable()) == 3
			}
		}
		return false
	})
	busy := a.Counters()[CtrConnLimit]
	ticks := func() uint64 { return c.Counters()[CtrAntiEntropy] }
	t0 := ticks()
	waitFor(t, 30*time.Second, "c's anti-entropy rounds", func() bool { return ticks() >= t0+5 })
	if got := a.Counters()[CtrConnLimit]; got != busy {
		t.Fatalf("a refused c %d more times after c reached it through b", got-busy)
	}
}

// A peer under half its limit whose gossip-dialled connections are up
// dials more: a dial's connection was counted twice (as a connection and
// as a dial in flight, for its whole life), so a peer some of whose first
// dials failed stopped below connWant, and passed over every record every
// tick. Here the router (limit 4: it aims for 2) holds one connection, to
// peer 1, which its gossip dial made; peer 2, reachable through 1, has
// room.
func TestGossipDialledConnectionsCountOnce(t *testing.T) {
	r, m := oneConnRouter(t, 4, 3)
	r.dials[m.ks[1]] = &gossipDial{inFlight: true} // its dial, serving the connection
	m.nb[1][2], m.nb[2][1] = true, true
	for _, i := range []int{1, 2} {
		rec := m.record(i)
		rec.Port = 6783
		for j := range rec.Neighbors {
			rec.Neighbors[j].IP = netipMust(fmt.Sprintf("192.0.2.%d", 10+j))
		}
		r.mergeRecordsLocked(nil, []Record{*rec}, []sigCheck{sigGood})
	}
	r.freshLocked()
	if !r.rt.reachable(m.ks[2]) || !r.recs[m.ks[2]].lastIP.IsValid() {
		t.Fatal("peer 2 is not a candidate: the test's mesh is wrong")
	}
	r.gossipDialsLocked(r.now())
	if d := r.dials[m.ks[2]]; d == nil || !d.inFlight {
		t.Fatal("one connection of the two it aims for, made by its own dial: it did not dial peer 2")
	}
}

// oneConnRouter returns a router at limit whose dials all fail, holding
// one connection, to peer 1 of a mesh view of n peers whose peer 0 is the
// router (peer 1's side of that edge noted in the view), with its mutex
// held until the test ends.
func oneConnRouter(t *testing.T, limit, n int) (*Router, *meshView) {
	t.Helper()
	r, err := New(Config{Private: newKey(t), Secret: testSecret, ConnLimit: limit, Network: failNetwork{},
		Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	r.ctx, r.cancel = context.WithCancel(context.Background())
	m := newMeshView(n)
	m.ks[0] = r.self
	r.mu.Lock()
	t.Cleanup(r.mu.Unlock) // before Close: cleanups run last first
	a, _ := net.Pipe()
	c := &conn{r: r, nc: a, peer: m.ks[1], done: make(chan struct{})}
	r.conns[c] = struct{}{}
	if err := r.addConnLocked(c); err != nil {
		t.Fatal(err)
	}
	r.publishNeighborsLocked()
	m.nb[1][0] = true
	return r, m
}

// failNetwork refuses every dial.
type failNetwork struct{}

func (failNetwork) Listen(string) (net.Listener, error) { return nil, errors.New("no listening here") }
func (failNetwork) DialContext(context.Context, string) (net.Conn, error) {
	return nil, errors.New("no dialling here")
}

// A joiner reaches nobody, so every record a full bootstrap peer referred
// it to is unreachable: it dials those whose records list fewer than
// ConnLimit neighbours first, and at most maxFullDials full ones a pass
// (each a refusal and a referral of the full peer's neighbours), where it
// dialled its pick of them, full or not, connWant at a time (105
// refusals for the 1,000th join in simulation).
func TestJoinerDialsPeersWithRoomFirst(t *testing.T) {
	const limit = 8 // connWant 4
	r, err := New(Config{Private: newKey(t), Secret: testSecret, ConnLimit: limit, Network: failNetwork{},
		Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.ctx, r.cancel = context.WithCancel(context.Background())
	// Candidates 0-5 full, 6-7 with room; the full ones first in our
	// own dial order, so that order alone would dial them.
	var cands []key.Public
	for len(cands) < 8 {
		cands = append(cands, newKey(t).Public())
	}
	slices.SortFunc(cands, func(a, b key.Public) int { return cmp.Compare(dialRank(r.self, a), dialRank(r.self, b)) })
	var recs []Record
	for i, k := range cands {
		rec := Record{Key: k, Version: 5, Port: 6783}
		n := limit
		if i >= 6 {
			n = 1
		}
		for j := range n {
			var nb key.Public
			nb[0], nb[1], nb[2] = 0xaa, byte(i), byte(j)
			rec.Neighbors = append(rec.Neighbors, Neighbor{Key: nb, Established: true})
		}
		recs = append(recs, rec)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mergeRecordsLocked(nil, recs, make([]sigCheck, len(recs)))
	r.freshLocked()
	for _, k := range cands {
		r.recs[k].lastIP = netipMust("192.0.2.1")
	}
	r.gossipDialsLocked(r.now())
	var dialled []int
	for i, k := range cands {
		if d := r.dials[k]; d != nil && d.inFlight {
			dialled = append(dialled, i)
		}
	}
	if want := []int{0, 1, 6, 7}; !slices.Equal(dialled, want) {
		t.Fatalf("dialled candidates %v (0-5 full, 6-7 with room; room for 4 dials); want %v: those with room and two full ones", dialled, want)
	}
}

// A peer under half its limit that reaches others (here: of a part cut
// off from the rest of the mesh) fills its room with the peers it reaches
// first, and dials at most bridgeCount unreachable ones a pass with the
// room left. Unreachable peers all came first: at N=300 in simulation
// the peers of a part of 30 cut off dialled the 270 others first,
// room-many a tick, each dial failing, so they sat under connWant while
// the partition lasted and made their own part's connections during the
// heal instead, each a new version of two records flooded through the
// healed mesh (issue 18). Here the router holds one connection, to peer
// 1; peers 2-4 are reached through 1, peers 5-12 not; all have room. At
// a limit of 6 (room for 2 dials) and of 12 (room for 5).
func TestPartFillsFromPeersItReaches(t *testing.T) {
	for _, tc := range []struct {
		limit, room int
	}{{6, 2}, {12, 5}} {
		t.Run(fmt.Sprintf("limit %d", tc.limit), func(t *testing.T) {
			reached, unreached := partDials(t, tc.limit)
			want := min(tc.room, 3) // of peers 2-4, in the router's own order
			if len(reached) != want || len(unreached) > min(tc.room-want, bridgeCount) {
				t.Fatalf("room for %d dials: dialled reachable peers %v and unreachable ones %v; want %d of the reachable 2-4 and at most %d unreachable", tc.room, reached, unreached, want, min(tc.room-want, bridgeCount))
			}
		})
	}
}

// partDials runs one pass of gossip dials of TestPartFillsFromPeersItReaches's
// router at limit and returns the reachable and unreachable peers dialled.
func partDials(t *testing.T, limit int) (reached, unreached []int) {
	r, m := oneConnRouter(t, limit, 13)
	for _, j := range []int{2, 3, 4} {
		m.nb[1][j], m.nb[j][1] = true, true
	}
	for i := 5; i < 13; i += 2 {
		m.nb[i][i+1], m.nb[i+1][i] = true, true // the other part, in pairs
	}
	for i := 1; i < 13; i++ {
		rec := m.record(i)
		rec.Port = 6783
		r.mergeRecordsLocked(nil, []Record{*rec}, []sigCheck{sigGood})
	}
	r.freshLocked()
	for i := 1; i < 13; i++ {
		r.recs[m.ks[i]].lastIP = netipMust(fmt.Sprintf("192.0.2.%d", i))
	}
	for i := 2; i < 13; i++ {
		if got, want := r.rt.reachable(m.ks[i]), i < 5; got != want {
			t.Fatalf("peer %d reachable %v, want %v: the test's mesh is wrong", i, got, want)
		}
	}
	r.gossipDialsLocked(r.now())
	for i := 2; i < 13; i++ {
		if d := r.dials[m.ks[i]]; d != nil && d.inFlight {
			if i < 5 {
				reached = append(reached, i)
			} else {
				unreached = append(unreached, i)
			}
		}
	}
	return reached, unreached
}
