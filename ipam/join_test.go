package ipam

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Peers join a network in batches, as sim/cmd/simbench builds its mesh:
// each joiner arrives with a few control neighbours (which exchange relay
// digests, and which each peer is told as the daemon's reconcile tells
// it: SetNeighbours, its preferred donors and its quick digest rounds'
// peers), every peer learns it is reachable, peers that see few arrivals at once send them their own
// entries (SendOwn), every peer ticks each second and sends a random peer
// a digest every 10 s (anti-entropy), and 5 % of messages are lost. Every
// joiner must get space from a donor and every ring must agree within a
// minute of each batch. The simulated mesh stopped forming near 150 peers
// (issue 18): that was load (TestChangeNotAnsweredByEveryone and
// TestStaleJoinerTakesItsGrant below), which this harness does not model,
// but with digests alone a joiner whose neighbours' rings were lost never
// got one (TestDigestFromJoiner), and this test failed on it.

// joinSim runs one such build. Reachability spreads as discovery's
// records do: a joiner reaches its control neighbours at once and the
// rest of the mesh (and the mesh it) within a few seconds, each peer at
// its own moment.
type joinSim struct {
	*sim
	joined   int
	step     int // quarter seconds
	arrivals []arrival
	edges    map[[2]int]bool
	// latency, when set, delays each message by up to that many quarter
	// seconds, and the messages to a peer granting space (busy with a
	// batch of joiners) by up to four times as long: the simulated mesh
	// on a loaded machine answers requests after the requester's timeout.
	latency int
}

// arrival is peer arr becoming reachable to peer obs at step at.
type arrival struct {
	at, obs, arr int
}

func newJoinSim(t testing.TB, seed uint64, n int) *joinSim {
	s := &sim{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), group: make([]int, n), now: time.Unix(1e9, 0),
		prefix: netip.MustParsePrefix("10.32.0.0/12"), reach: map[int]map[int]bool{0: {}}}
	for i := range n {
		p := &simPeer{i: i, key: pk(i), mem: newMemStore(), dead: i > 0}
		s.peers = append(s.peers, p)
		s.open(p)
	}
	if err := s.peers[0].a.Seed(); err != nil {
		t.Fatal(err)
	}
	return &joinSim{sim: s, joined: 1, edges: map[[2]int]bool{}}
}

// join brings in the next k peers at once.
func (j *joinSim) join(k int) {
	s := j.sim
	first := j.joined
	j.joined += k
	for i := first; i < j.joined; i++ {
		s.peers[i].dead = false
		s.reach[i] = map[int]bool{}
		for range 3 {
			nb := s.rng.IntN(i)
			j.edges[[2]int{i, nb}], j.edges[[2]int{nb, i}] = true, true
		}
		s.peers[i].a.WantSpace()
	}
	for i := first; i < j.joined; i++ {
		for q := range j.joined {
			if q == i {
				continue
			}
			at := j.step + 1 + s.rng.IntN(12)
			if j.edges[[2]int{i, q}] {
				at = j.step
			}
			j.arrivals = append(j.arrivals, arrival{at, i, q}, arrival{at + s.rng.IntN(4), q, i})
		}
	}
	j.arrive()
}

// arrive makes the arrivals due reachable, and does what the daemon's
// reconcile does on them: SetPeers, SetNeighbours with the reachable
// control neighbours, a relay digest to a new control neighbour
// (NewNeighbour), our own entries to a few other arrivals. Without
// SetNeighbours no peer ran quick rounds: a broadcast lost on its way
// waited for the 10 s anti-entropy rounds, themselves lost at times, and
// a late grant's free count could miss a peer for 60 s (1-2 % of runs).
func (j *joinSim) arrive() {
	s := j.sim
	due := map[int][]int{}
	rest := j.arrivals[:0]
	for _, a := range j.arrivals {
		if a.at <= j.step {
			due[a.obs] = append(due[a.obs], a.arr)
		} else {
			rest = append(rest, a)
		}
	}
	j.arrivals = rest
	for obs := range len(s.peers) {
		arr := due[obs]
		if len(arr) == 0 {
			continue
		}
		p := s.peers[obs]
		for _, q := range arr {
			s.reach[obs][q] = true
		}
		var keys, nbs []key.Public
		for q := range s.reach[obs] {
			keys = append(keys, s.peers[q].key)
			if j.edges[[2]int{obs, q}] {
				nbs = append(nbs, s.peers[q].key)
			}
		}
		p.a.SetPeers(keys)
		p.a.SetNeighbours(nbs)
		var others []int
		for _, q := range arr {
			if j.edges[[2]int{obs, q}] {
				p.a.NewNeighbour(s.peers[q].key)
			} else {
				others = append(others, q)
			}
		}
		if len(others) <= MaxSendOwnArrivals {
			for _, q := range others {
				p.a.SendOwn(s.peers[q].key)
			}
		}
	}
}

// second runs four quarter seconds: arrivals, then what is queued (in a
// random order, and what that causes); then every peer ticks, and every
// 10th second each peer sends its ring to a random peer it reaches.
func (j *joinSim) second() {
	s := j.sim
	for range 4 {
		j.step++
		j.arrive()
		if j.latency > 0 {
			j.deliverDue()
			continue
		}
		for round := 0; len(s.queue) > 0 && round < 1000; round++ {
			s.deliver(len(s.queue))
		}
	}
	s.now = s.now.Add(time.Second)
	alive := s.alive()
	for _, p := range alive {
		p.a.Tick()
	}
	if j.step%40 == 0 {
		for _, p := range alive {
			var to []int
			for q := range s.reach[p.i] {
				to = append(to, q)
			}
			if len(to) > 0 {
				slices.Sort(to)
				p.a.SendDigest(s.peers[to[s.rng.IntN(len(to))]].key)
			}
		}
	}
}

// deliverDue delivers the messages whose delay has passed, stamping
// each new one with its delay first (latency).
func (j *joinSim) deliverDue() {
	s := j.sim
	for round := 0; round < 1000; round++ {
		var due []simMsg
		rest := s.queue[:0]
		for _, m := range s.queue {
			if m.due == 0 {
				d := s.rng.IntN(j.latency + 1)
				if s.peers[m.to].a.Counters()["ipam_grant"] > 0 && s.rng.IntN(2) == 0 {
					d = s.rng.IntN(4*j.latency + 1)
				}
				m.due = j.step + d
			}
			if m.due <= j.step {
				due = append(due, m)
			} else {
				rest = append(rest, m)
			}
		}
		if len(due) == 0 {
			s.queue = rest
			return
		}
		s.queue = append(due, rest...)
		s.deliver(len(due))
		j.overlapCheck()
	}
}

// settled says why the peers do not agree yet, or "".
func (j *joinSim) settled() string {
	alive := j.alive()
	r0 := alive[0].a.View().Ring
	for _, p := range alive {
		v := p.a.View()
		if len(v.Ring.Spans(p.key)) == 0 {
			return fmt.Sprintf("peer %d owns no space", p.i)
		}
		if !v.Ring.Equal(r0) {
			return fmt.Sprintf("peer %d's ring (%d entries) differs from peer 0's (%d)%s", p.i, len(v.Ring.Entries), len(r0.Entries), firstDiff(v.Ring, r0))
		}
	}
	return ""
}

// firstDiff describes the first entry where a and b differ.
func firstDiff(a, b *Ring) string {
	for i := range min(len(a.Entries), len(b.Entries)) {
		x, y := a.Entries[i], b.Entries[i]
		if x != y {
			return fmt.Sprintf(": first at %v: %v owner %s v%d free %d by %s, against %v owner %s v%d free %d by %s",
				i, u2a(x.Token), x.Owner.Name(), x.Version, x.Free, x.Writer.Name(), u2a(y.Token), y.Owner.Name(), y.Version, y.Free, y.Writer.Name())
		}
	}
	if len(a.Entries) != len(b.Entries) {
		return ": one has more entries"
	}
	return ": votes or transfers"
}

// build joins n-1 peers batch at a time and returns an error naming the
// first batch after which the peers did not agree within limit seconds.
func (j *joinSim) build(batch, limit int) error {
	for j.joined < len(j.peers) {
		k := min(batch, len(j.peers)-j.joined)
		j.join(k)
		why, took := "", 0
		for range limit {
			took++
			j.second()
			if why = j.settled(); why == "" {
				break
			}
		}
		if why != "" {
			return fmt.Errorf("after joining peers %d-%d (ring of %d entries): %s after %d s", j.joined-k, j.joined-1, len(j.peers[0].a.View().Ring.Entries), why, limit)
		}
		j.check(j.joined)
		j.t.Logf("%d peers: %d entries, agreed in %d s", j.joined, len(j.peers[0].a.View().Ring.Entries), took)
	}
	return nil
}

func TestJoinInBatches(t *testing.T) {
	n, batch := 200, 50
	if testing.Short() || raceEnabled {
		n = 120
	}
	for seed := range uint64(1) { // more seeds find more; one per run is what the suite can afford
		j := newJoinSim(t, seed, n)
		j.drop = 0.05
		err := j.build(batch, 60)
		counters := map[string]uint64{}
		for _, p := range j.peers {
			for k, v := range p.a.Status().Counters {
				counters[k] += v
			}
			p.a.Close()
		}
		if err != nil {
			t.Fatalf("seed %d, %d peers in batches of %d: %v\ncounters %v", seed, n, batch, err, counters)
		}
		t.Logf("%d messages, %d bytes: %.1f messages per join and peer", j.sent, j.sentBytes, float64(j.sent)/float64(n-1)/float64(n))
	}
}

// TestJoinInBatchesLate is TestJoinInBatches with messages late, as on
// the simulation's loaded machine (a donor busy with a batch of joiners
// answers after the requester's timeout), and no two peers may ever own
// the same addresses in their own rings (overlapCheck, after every
// delivery). It failed on both: a grantee took its grant from a third
// peer's stale ring and believed it owned the next grantee's space too
// (TestGrantTakenOnlyFromGranter), and the rings never agreed. With the
// peers told their control neighbours it failed 2 of 50 runs: a joiner
// put its first ring together from parts of different moments, holding a
// grant without its end, and a grantee that took that ring refused its
// own grant forever (TestAssembledRingKeepsGrantEnds).
func TestJoinInBatchesLate(t *testing.T) {
	n, batch := 150, 50
	if testing.Short() || raceEnabled {
		n = 100
	}
	j := newJoinSim(t, 1, n)
	j.drop = 0.05
	j.latency = 8
	err := j.build(batch, 60)
	counters := map[string]uint64{}
	for _, p := range j.peers {
		for k, v := range p.a.Counters() {
			counters[k] += v
		}
		p.a.Close()
	}
	if err != nil {
		t.Fatalf("%d peers in batches of %d: %v\ncounters %v", n, batch, err, counters)
	}
	t.Logf("%d messages, %d bytes: %.1f messages per join and peer; counters %v", j.sent, j.sentBytes, float64(j.sent)/float64(n-1)/float64(n), counters)
}

// TestChangeNotAnsweredByEveryone (issue 18): a change broadcast by a peer
// whose ring lags (it missed another owner's later state) is not answered
// by every receiver. It was: each of N-1 peers sent the sender what it
// lacked, N-1 messages to one peer per change, and a donor granting to a
// batch of joiners fell further behind with every change (the simulated
// mesh stopped forming near 150 peers). Anti-entropy repairs the sender.
func TestChangeNotAnsweredByEveryone(t *testing.T) {
	net, as := wideMesh(t, 20)
	donor := as[0]
	var grantee *Allocator // the owner of the entry after the donor's first
	next := donor.View().Ring.Entries[1].Owner
	for _, a := range as {
		if a.self == next {
			grantee = a
		}
	}
	if grantee == nil || grantee == donor {
		t.Fatal("setting up: no other peer's entry follows the donor's")
	}
	// The grantee's next free count reaches everyone but the donor.
	if _, err := grantee.Allocate("x"); err != nil {
		t.Fatal(err)
	}
	grantee.Tick()
	var kept []simMsg2
	for _, m := range net.queue {
		if m.to != donor.self {
			kept = append(kept, m)
		}
	}
	net.queue = kept
	net.run(t)
	// The donor changes its own entry, next to the grantee's: its
	// broadcast carries the grantee's entry as the bound, in the state the
	// donor still holds.
	if _, err := donor.Allocate("y"); err != nil {
		t.Fatal(err)
	}
	donor.Tick()
	toDonor := 0
	for len(net.queue) > 0 {
		m := net.queue[0]
		net.queue = net.queue[1:]
		if m.to == donor.self {
			toDonor++
		}
		if err := net.peers[m.to].HandleMessage(m.from, m.b); err != nil {
			t.Fatal(err)
		}
	}
	if toDonor > 1 {
		t.Errorf("%d peers answered the donor's change (of %d that heard it)", toDonor, len(as)-1)
	}
	// One anti-entropy round repairs the donor.
	donor.SendDigest(grantee.self)
	net.run(t)
	if !donor.View().Ring.Equal(grantee.View().Ring) {
		t.Fatal("the donor still lacks the grantee's state after a digest round")
	}
}

// TestStaleJoinerTakesItsGrant: a joiner whose ring is older than its
// donor's (it adopted a neighbour's ring before the donor granted another
// peer the space next to what it now grants the joiner) owns its space as
// soon as the donor's answer arrives. The grant's span ends at a token the
// joiner did not have, so the grant alone was refused (authority.go), the
// joiner waited to ask the donor for the rest and, after the request's
// timeout, asked another donor too.
func TestStaleJoinerTakesItsGrant(t *testing.T) {
	net := &loopNet{peers: map[key.Public]*Allocator{}}
	d, x, j := openWide(t, net, pk(0)), openWide(t, net, pk(1)), openWide(t, net, pk(2))
	if err := d.Seed(); err != nil {
		t.Fatal(err)
	}
	introduce(d, x, j)
	// j adopts d's ring as it is now: d owns everything.
	d.SendRing(j.self, false)
	net.run(t)
	// x joins and gets the upper half, then publishes its free count;
	// none of it reaches j.
	d.SendRing(x.self, false)
	net.run(t)
	x.WantSpace()
	x.Tick()
	net.deliverWhere(t, func(m simMsg2) bool { return m.to != j.self })
	x.Tick()
	net.queue = slices.DeleteFunc(net.queue, func(m simMsg2) bool { return m.to == j.self })
	net.run(t)
	if len(x.View().Ring.Spans(x.self)) == 0 || len(j.View().Ring.Entries) != 1 {
		t.Fatal("setting up: x should own space and j's ring lack it")
	}
	// j asks d (the only donor with free space in its view); d grants the
	// upper half of what it has left, which ends where x's space begins.
	j.WantSpace()
	net.run(t)
	if len(j.View().Ring.Spans(j.self)) == 0 {
		t.Fatalf("j owns no space after d's answer (counters %v)", j.Status().Counters)
	}
	if got := d.Status().Counters["ipam_grant"]; got != 2 {
		t.Fatalf("d granted %d times, want 2", got)
	}
}

// TestRequestAgainNotGrantedTwice: a joiner whose donor's answer was lost
// asks again, of another donor after its timeout; that donor, which heard
// the first grant, sends its ring (holding it) rather than a second grant.
func TestRequestAgainNotGrantedTwice(t *testing.T) {
	net, as := wideMesh(t, 3)
	j := openWide(t, net, pk(9))
	introduce(append(as, j)...)
	as[0].SendRing(j.self, false)
	net.run(t)
	grants := func() (n uint64) {
		for _, a := range as {
			n += a.Status().Counters["ipam_grant"]
		}
		return n
	}
	before := grants()
	j.WantSpace()
	// Deliver the request and everything but what goes to j.
	net.deliverWhere(t, func(m simMsg2) bool { return m.to != j.self })
	if grants() != before+1 || len(j.View().Ring.Spans(j.self)) != 0 {
		t.Fatal("setting up: one grant, lost on its way to j")
	}
	for range 20 {
		if len(j.View().Ring.Spans(j.self)) > 0 {
			break
		}
		j.mu.Lock()
		j.reqAt = j.reqAt.Add(-time.Minute) // the request times out
		j.mu.Unlock()
		j.Tick()
		net.run(t)
	}
	if len(j.View().Ring.Spans(j.self)) == 0 {
		t.Fatal("j owns no space after asking again")
	}
	if got := grants() - before; got != 1 {
		t.Errorf("%d grants for one joiner", got)
	}
}

// overlapCheck fails the test if two peers each own, in their own rings,
// a span of the same addresses (both could hand out one address).
func (j *joinSim) overlapCheck() {
	type own struct {
		p int
		s Span
	}
	var all []own
	for _, p := range j.alive() {
		for _, sp := range p.a.View().Ring.Spans(p.key) {
			all = append(all, own{p.i, sp})
		}
	}
	slices.SortFunc(all, func(x, y own) int { return cmp.Compare(x.s.First, y.s.First) })
	for k := 1; k < len(all); k++ {
		if x, y := all[k-1], all[k]; y.s.First <= x.s.Last {
			j.t.Fatalf("quarter second %d: peer %d owns %v and peer %d %v in their own rings", j.step, x.p, x.s, y.p, y.s)
		}
	}
}
