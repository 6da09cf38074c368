package ipam

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Networks created apart meet: every peer launches alone (seeding its own
// network and taking its host address in it, as the daemon does), then
// the peers connect in groups at once (stage 1: fresh networks meeting,
// which merge into bigger ones), then all the groups at once (stage 2:
// merged networks meeting each other and fresh ones), with messages in a
// random order. At most one peer puts a container on its network, before
// stage 1, between the stages or in the middle of stage 2. Whatever the
// order, the peers must end in one network (one ring), the container
// keeping its address throughout, and every host with a distinct address.

// meetRun is one such sequence.
type meetRun struct {
	s         *sim
	used      *simPeer // the peer that attaches a container, or nil
	when      int      // 0 before stage 1, 1 between, 2 during stage 2
	attaching bool     // the container was attached (retried until it has an address)
	addr      string   // the container's address, once allocated
	stage1    []int
	networks2 int  // networks that met at stage 2
	grown2    bool // one of them had more than one owner
}

const meetContainer = "container"

func TestNetworksMeet(t *testing.T) {
	runs := 120
	if testing.Short() {
		runs = 40
	}
	if raceEnabled {
		runs /= 4
	}
	var failed []string
	var threeFresh, grownMeets, usedRuns int
	for seq := range runs {
		r := newMeetRun(t, uint64(seq))
		err := r.run()
		if r.networks2 >= 3 {
			threeFresh++
		}
		if r.grown2 {
			grownMeets++
		}
		if r.used != nil {
			usedRuns++
		}
		for _, p := range r.s.peers {
			p.a.Close()
		}
		if err != nil {
			failed = append(failed, fmt.Sprintf("sequence %d: %v", seq, err))
		}
	}
	t.Logf("%d sequences: %d with three or more networks meeting at once, %d with a merged network meeting another, %d with a container", runs, threeFresh, grownMeets, usedRuns)
	if len(failed) > 0 {
		t.Errorf("%d of %d sequences did not end in one network:\n%s", len(failed), runs, strings.Join(failed[:min(len(failed), 8)], "\n"))
	}
	if threeFresh == 0 || grownMeets == 0 || usedRuns == 0 {
		t.Errorf("the sequences did not exercise three networks meeting, a merged network meeting another, and a used network")
	}
}

func newMeetRun(t *testing.T, seq uint64) *meetRun {
	s := newSimUnseeded(t, seq, 3+int(seq%5), seq%8 == 0)
	s.networks = true
	r := &meetRun{s: s, when: -1}
	n := len(s.peers)
	k := 1 + s.rng.IntN(n)
	for i := range s.group {
		s.group[i] = s.rng.IntN(k)
	}
	r.stage1 = append([]int(nil), s.group...)
	if s.rng.IntN(3) != 0 {
		r.used = s.peers[s.rng.IntN(n)]
		r.when = s.rng.IntN(3)
	}
	return r
}

func (r *meetRun) run() error {
	s := r.s
	for _, p := range s.peers {
		if err := p.a.Seed(); err != nil {
			s.t.Fatal(err)
		}
		r.hostAddress(p)
	}
	if r.when == 0 {
		r.attach()
	}
	r.meet(nil)
	if r.when == 1 {
		r.attach()
	}
	seeds := map[Seed]int{}
	for _, p := range s.peers {
		seeds[p.a.Status().Seed]++
		if len(p.a.Status().Peers) > 1 {
			r.grown2 = true
		}
	}
	r.networks2 = len(seeds)
	if len(seeds) < 2 {
		r.grown2 = false
	}
	clear(s.group)
	var during func()
	if r.when == 2 {
		during = r.attach
	}
	r.meet(during)
	return r.settle()
}

// attach allocates the container's address on the used peer (retried
// each tick while the peer waits for space).
func (r *meetRun) attach() {
	if r.used == nil || r.addr != "" {
		return
	}
	r.attaching = true
	addr, err := r.used.a.Allocate(meetContainer)
	switch {
	case err == nil:
		r.addr = addr.String()
		r.s.logf("attach on %d: %v", r.used.i, addr)
	case !errors.Is(err, ErrWaitingForSpace):
		r.s.t.Fatalf("attach: %v", err)
	}
}

// hostAddress is the daemon's ensureHostIP: a host without an address
// (just launched, or its network gave way) allocates one.
func (r *meetRun) hostAddress(p *simPeer) {
	if len(p.a.AddressesOf(HostID)) > 0 {
		return
	}
	if _, err := p.a.Allocate(HostID); err != nil && !errors.Is(err, ErrWaitingForSpace) {
		r.s.t.Fatalf("host address of %d: %v", p.i, err)
	}
}

// meet connects the peers of each group (as a daemon does when a
// neighbour arrives: SetPeers and a ring broadcast), then runs messages,
// ticks and anti-entropy in a random interleaving; during runs once, at a
// random point.
func (r *meetRun) meet(during func()) {
	s := r.s
	s.setPeers()
	for _, p := range s.peers {
		p.a.Gossip()
	}
	at := s.rng.IntN(40)
	for i := range 80 {
		if i == at && during != nil {
			during()
		}
		switch x := s.rng.IntN(40); {
		case x < 28:
			s.deliver(1 + s.rng.IntN(8))
		case x < 39:
			r.tick()
		default:
			r.restart(s.peers[s.rng.IntN(len(s.peers))])
		}
		r.check()
	}
}

// restart crashes p and opens it again on its state (messages in flight
// to it are lost), as a daemon restarted in the middle of the meeting.
func (r *meetRun) restart(p *simPeer) {
	s := r.s
	s.logf("restart %d", p.i)
	p.a.Close()
	s.queue = slices.DeleteFunc(s.queue, func(m simMsg) bool { return m.to == p.i })
	s.open(p)
	s.setPeers()
}

// tick is one second of every daemon: the allocator's tick, the host
// address, the container's retry, and now and then anti-entropy (the ring
// sent to one reachable peer chosen at random, daemon.ipamAntiEntropy).
func (r *meetRun) tick() {
	s := r.s
	s.now = s.now.Add(time.Second)
	for _, p := range s.peers {
		p.a.Tick()
		r.hostAddress(p)
	}
	if r.attaching {
		r.attach()
	}
	for _, p := range s.peers {
		if s.rng.IntN(10) != 0 {
			continue
		}
		var reach []*simPeer
		for _, q := range s.peers {
			if q != p && s.group[q.i] == s.group[p.i] {
				reach = append(reach, q)
			}
		}
		if len(reach) > 0 {
			p.a.SendRing(reach[s.rng.IntN(len(reach))].key, false)
		}
	}
}

// check: within each network the invariants hold, no peer lost an
// allocation, and the container keeps its address.
func (r *meetRun) check() {
	s := r.s
	byNet := map[Seed][]PeerView{}
	for _, p := range s.peers {
		v := p.a.View()
		byNet[v.Ring.Seed] = append(byNet[v.Ring.Seed], v)
		if c := p.a.Conflicts(); len(c) > 0 {
			s.t.Fatalf("sequence %d: peer %d lost allocations %v\n%s", s.seed, p.i, c, r.trace())
		}
	}
	for seed, views := range byNet {
		if err := Check(views); err != nil {
			s.t.Fatalf("sequence %d: network %v: %v\n%s", s.seed, seed, err, r.trace())
		}
	}
	if r.addr != "" {
		if got := r.used.a.AddressesOf(meetContainer); len(got) != 1 || got[0].String() != r.addr {
			s.t.Fatalf("sequence %d: the container on peer %d had %s, now %v\n%s", s.seed, r.used.i, r.addr, got, r.trace())
		}
	}
}

// settle runs the daemons (ticks and anti-entropy, no more broadcasts on
// connect) until every peer holds the same ring, every host has an address
// and the container has one, or gives up and says how the peers split.
func (r *meetRun) settle() error {
	s := r.s
	for range 300 {
		r.tick()
		for len(s.queue) > 0 {
			s.deliver(len(s.queue))
		}
		r.check()
		if r.settled() {
			return nil
		}
	}
	return fmt.Errorf("not one network after 300 s: %s", r.trace())
}

func (r *meetRun) settled() bool {
	s := r.s
	if !s.quiet() || r.used != nil && r.addr == "" {
		return false
	}
	for _, p := range s.peers {
		if len(p.a.AddressesOf(HostID)) == 0 {
			return false
		}
	}
	return true
}

// trace says where each peer is.
func (r *meetRun) trace() string {
	s := r.s
	var b strings.Builder
	fmt.Fprintf(&b, "stage-1 groups %v", r.stage1)
	if r.used != nil {
		fmt.Fprintf(&b, "; container on peer %d (when %d) at %q", r.used.i, r.when, r.addr)
	}
	for _, p := range s.peers {
		st := p.a.Status()
		fmt.Fprintf(&b, "\n  peer %d (%s): network %v, %d owners, used %v, host %v", p.i, p.key.Name(), st.Seed, len(st.Peers), p.a.View().Ring.Used, p.a.AddressesOf(HostID))
	}
	if n := len(s.log); n > 0 {
		fmt.Fprintf(&b, "\n  %s", strings.Join(s.log[max(0, n-5):], "\n  "))
	}
	return b.String()
}

// TestGaveWayThenUsedArrives is TestConnectForget's race (integration)
// step by step: h1's network is used, h2's and h3's are fresh; h2 sees
// h3's ring first, gives way to it (the smaller seed) and gets space from
// h3; then h1's ring arrives. {h2, h3} holds no container, so it gives way
// in turn, and all three end on h1's network with distinct host addresses.
func TestGaveWayThenUsedArrives(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	h1, h2, h3 := openTest(t, n, pk(5), ""), openTest(t, n, pk(6), ""), openTest(t, n, pk(7), "")
	if h2.self.Less(h3.self) {
		h2, h3 = h3, h2 // h3 has the smaller seed
	}
	for _, h := range []*Allocator{h1, h2, h3} {
		if err := h.Seed(); err != nil {
			t.Fatal(err)
		}
		if _, err := h.Allocate(HostID); err != nil {
			t.Fatal(err)
		}
	}
	c1, err := h1.Allocate("c1")
	if err != nil {
		t.Fatal(err)
	}
	n.queue = nil
	among := func(hs ...*Allocator) { deliverAmong(t, n, hs...) }
	h2.SetPeers([]key.Public{h3.self})
	h3.SetPeers([]key.Public{h2.self})
	if err := h2.HandleMessage(h3.self, h3.RingMessage()); err != nil || h2.Status().Seed != h3.Status().Seed {
		t.Fatalf("h2 did not give way to h3's network: %v", err)
	}
	if _, err := h2.Allocate(HostID); !errors.Is(err, ErrWaitingForSpace) {
		t.Fatalf("h2's host address in h3's network: %v", err)
	}
	among(h2, h3)
	if _, err := h2.Allocate(HostID); err != nil || len(h3.Status().Peers) != 2 {
		t.Fatalf("h2 got no space in h3's network: %v %+v", err, h3.Status().Peers)
	}

	// h1's ring reaches h2, then h2's new ring reaches h3.
	all := []key.Public{h1.self, h2.self, h3.self}
	for _, h := range []*Allocator{h1, h2, h3} {
		h.SetPeers(all)
	}
	if err := h2.HandleMessage(h1.self, h1.RingMessage()); err != nil || h2.Status().Seed != h1.Status().Seed {
		t.Fatalf("h2, in a two-owner network with no container, did not give way to h1's used one: %v (h2 on %v)", err, h2.Status().Seed)
	}
	if err := h3.HandleMessage(h2.self, h2.RingMessage()); err != nil || h3.Status().Seed != h1.Status().Seed {
		t.Fatalf("h3 did not follow to h1's network: %v", err)
	}
	for range 3 {
		for _, h := range []*Allocator{h1, h2, h3} {
			h.Allocate(HostID)
		}
		among(h1, h2, h3)
	}
	var views []PeerView
	for _, h := range []*Allocator{h1, h2, h3} {
		if len(h.AddressesOf(HostID)) != 1 {
			t.Fatalf("%s has no host address in h1's network", h.self.Name())
		}
		views = append(views, h.View())
	}
	if got := h1.AddressesOf("c1"); len(got) != 1 || got[0] != c1 {
		t.Fatalf("h1's container had %v, now %v", c1, got)
	}
	if err := Check(views); err != nil {
		t.Fatal(err)
	}
}

// deliverAmong delivers the queued messages between the given peers and
// drops the others.
func deliverAmong(t *testing.T, n *loopNet, hs ...*Allocator) {
	in := map[key.Public]bool{}
	for _, h := range hs {
		in[h.self] = true
	}
	for len(n.queue) > 0 {
		m := n.queue[0]
		n.queue = n.queue[1:]
		if in[m.from] && in[m.to] {
			if err := n.peers[m.to].HandleMessage(m.from, m.b); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestComeBackAfterRestart: p created network A and granted space to q,
// then to r (q never heard of the second grant); p gave A up for B, an
// unused network with a smaller seed, and restarted. Then q attaches a
// container (A is used) and sends p its ring of A, which lacks p's grant
// to r. p comes back to A from the ring it kept in ipam.db, so it never
// believes it still owns r's space.
func TestComeBackAfterRestart(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	pathP := filepath.Join(t.TempDir(), "p.db")
	p, q, r := openTest(t, n, pk(0x31), pathP), openTest(t, n, pk(0x32), ""), openTest(t, n, pk(0x33), "")
	b := openTest(t, n, pk(0x30), "") // the smaller seed (pk orders by index)
	p.Seed()
	b.Seed()
	p.SetPeers([]key.Public{q.self, r.self, b.self})
	q.SetPeers([]key.Public{p.self})
	r.SetPeers([]key.Public{p.self})
	n.queue = nil
	for _, x := range []*Allocator{q, r} {
		if err := x.HandleMessage(p.self, p.RingMessage()); err != nil {
			t.Fatal(err)
		}
		x.WantSpace()
		deliverAmong(t, n, p, x)
		if len(x.Status().Peers) < 2 {
			t.Fatalf("%s got no space in A", x.self.Name())
		}
	}
	if err := p.HandleMessage(b.self, b.RingMessage()); err != nil || p.Status().Seed != b.Status().Seed {
		t.Fatalf("p did not give A up for B: %v", err)
	}
	p.Close()
	p = openTest(t, n, pk(0x31), pathP)
	p.SetPeers([]key.Public{q.self, r.self, b.self})
	if _, err := q.Allocate("c"); err != nil {
		t.Fatal(err)
	}
	n.queue = nil
	if err := p.HandleMessage(q.self, q.RingMessage()); err != nil || p.Status().Seed != q.Status().Seed {
		t.Fatalf("p did not come back to A, now used: %v", err)
	}
	if st := p.Status(); st.Counters["ipam_seed_abandoned"] != 1 {
		t.Fatalf("counters %v", st.Counters)
	}
	if err := Check([]PeerView{p.View(), r.View()}); err != nil {
		t.Fatalf("p came back to A believing it owns r's space: %v", err)
	}
}
