package ipam

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// TestConcurrentRmpeerWinnerPublishesInheritedFree is TestIPAMRmpeer
// (integration) step by step: h3 dies, h1 and h2 run rmpeer h3 while cut
// off from each other, then the cut heals. The winner's transfer completes
// in a merge (the loser's vote arrives). From that moment the winner must
// publish the free addresses of the space it inherited: its status and
// the others' donor choice read the published count, and a winner that
// waited for its next Tick showed only its own free space (CI, 05:13:
// "filling the winner" attached that many, and h3's old addresses beyond
// the first stayed unused). The winner is never ticked here, so only what
// the merge itself publishes counts; filling the winner by the count it
// shows must then use every free address of h3's old range.
func TestConcurrentRmpeerWinnerPublishesInheritedFree(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	h1, h2, h3 := openTest(t, n, pk(1), ""), openTest(t, n, pk(2), ""), openTest(t, n, pk(3), "")
	all := []*Allocator{h1, h2, h3}
	if err := h1.Seed(); err != nil {
		t.Fatal(err)
	}
	introduce(all...)
	n.run(t)
	for _, a := range []*Allocator{h2, h3} {
		a.WantSpace()
		n.run(t)
		for _, id := range []string{"c1", "c2"} {
			if _, err := a.Allocate(id); err != nil {
				t.Fatalf("%s: %v", a.self.Name(), err)
			}
		}
		n.run(t)
	}
	for _, a := range all {
		a.Tick()
	}
	n.run(t)
	deadSpans := h1.View().Ring.Spans(h3.self)
	if len(deadSpans) == 0 {
		t.Fatal("h3 owns no space")
	}

	// h3 dies; h1 and h2 cannot hear each other while both run rmpeer.
	delete(n.peers, h3.self)
	h1.SetPeers(nil)
	h2.SetPeers(nil)
	for _, a := range []*Allocator{h1, h2} {
		if err := a.RemovePeer(h3.self); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		h1.Tick()
		h2.Tick()
		n.queue = nil
	}
	for _, a := range []*Allocator{h1, h2} {
		for _, tr := range a.Status().Transfers {
			if tr.Done {
				t.Fatalf("%s completed without the other's vote", a.self.Name())
			}
		}
	}

	// The heal. The smaller key wins; only the loser ticks (it moves its
	// vote at its next step after withdrawing), so the winner completes
	// in the merge that brings that vote.
	winner, loser := h1, h2
	if h2.self.Less(h1.self) {
		winner, loser = h2, h1
	}
	h1.SetPeers([]key.Public{h2.self})
	h2.SetPeers([]key.Public{h1.self})
	done := func() bool {
		for _, tr := range winner.Status().Transfers {
			if tr.Dead == h3.self && tr.Issuer == winner.self && tr.Done {
				return true
			}
		}
		return false
	}
	for i := 0; !done(); i++ {
		if i == 10 {
			t.Fatalf("the winner never completed: %+v", winner.Status().Transfers)
		}
		winner.SendRing(loser.self, true)
		loser.SendRing(winner.self, true)
		n.run(t)
		loser.Tick()
		n.run(t)
	}
	n.run(t)
	if got := winner.Prefixes(h3.self); len(got) != 0 {
		t.Fatalf("h3 still owns %v in the winner's view", got)
	}

	// What the winner really has free: every address of its spans that
	// is neither allocated nor reserved (10.32.0.0, .1 and .255).
	reserved := map[netip.Addr]bool{}
	for _, s := range []string{"10.32.0.0", "10.32.0.1", "10.32.0.255"} {
		reserved[netip.MustParseAddr(s)] = true
	}
	allocated := map[netip.Addr]bool{}
	for _, al := range winner.Allocations() {
		allocated[al.Addr] = true
	}
	var want uint64
	for _, p := range winner.Prefixes(winner.self) {
		for a := p.Addr(); p.Contains(a); a = a.Next() {
			if !allocated[a] && !reserved[a] {
				want++
			}
		}
	}
	for _, v := range []*Allocator{winner, loser} {
		for _, p := range v.Status().Peers {
			if p.Peer == winner.self && p.Free != want {
				t.Errorf("%s shows the winner %s with %d free, it has %d (its own space and h3's %v)",
					v.self.Name(), winner.self.Name(), p.Free, want, deadSpans)
			}
		}
	}

	// Filled by the count it shows, the winner uses all of h3's old space.
	var free uint64
	for _, p := range winner.Status().Peers {
		if p.Peer == winner.self {
			free = p.Free
		}
	}
	for i := range free {
		if _, err := winner.Allocate("fill" + string(rune('a'+i))); err != nil {
			if errors.Is(err, ErrWaitingForSpace) {
				t.Fatalf("winner full after %d of the %d it showed free", i, free)
			}
			t.Fatal(err)
		}
	}
	allocated = map[netip.Addr]bool{}
	for _, al := range winner.Allocations() {
		allocated[al.Addr] = true
	}
	for _, s := range deadSpans {
		for u := uint64(s.First); u <= uint64(s.Last); u++ {
			if a := u2a(uint32(u)); !allocated[a] && !reserved[a] {
				t.Errorf("after filling the winner, h3's old address %v is unused", a)
			}
		}
	}
}

// TestRemovePeerTooManyElectors: rmpeer needs a vote of every owner.
// Past the old MaxVotes (160) it used to be refused; now the vote table
// holds only pending rmpeers' votes, so rmpeer is refused only when the
// votes of those pending and of the new one would overflow it (a transfer
// that cannot collect every vote would never complete), and a refused
// rmpeer writes nothing.
func TestRemovePeerTooManyElectors(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openWide(t, n, pk(0))
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	owners := grantToMadeUpOwners(t, n, a, 200)
	a.SetPeers(owners[2:])
	// 200 owners: beyond the old bound, it goes ahead.
	if err := a.RemovePeer(owners[0]); err != nil {
		t.Fatalf("rmpeer among %d owners: %v", len(owners)+1, err)
	}
	// A table almost full of another pending rmpeer's votes: refused.
	a.mu.Lock()
	a.ring.Votes = a.ring.Votes[:0]
	for i := range MaxVotes - 150 {
		var voter key.Public
		voter[0], voter[1], voter[2] = 0xaa, byte(i>>8), byte(i)
		a.ring.Votes = append(a.ring.Votes, Vote{Voter: voter, Dead: owners[0], Seq: 1, Issuer: pk(0)})
	}
	slices.SortFunc(a.ring.Votes, cmpVote)
	a.mu.Unlock()
	before := a.View().Ring
	err := a.RemovePeer(owners[1])
	if !errors.Is(err, ErrTooManyElectors) {
		t.Fatalf("rmpeer with %d votes pending among %d owners: %v, want ErrTooManyElectors", len(before.Votes), len(owners)+1, err)
	}
	if after := a.View().Ring; !after.Equal(before) {
		t.Fatalf("a refused rmpeer wrote %d transfers and %d votes", len(after.Transfers), len(after.Votes))
	}
}

// TestRmpeerPartitionsWithoutCommonOwner: two issuers of one dead peer's
// transfer, cut off from each other, with no live owner in common. The
// seed S owned the range but a half it granted to X; S and X die. C's
// transfer of S is pending (it needs X's vote, which never comes) when
// the network splits into {A} and {B, C}; then A and B each run rmpeer
// X. A's ring then holds no live owner at all: S and X are both subjects
// of transfers, and A reaches nobody. Before Dec 2026 its electors were
// only itself, and A completed on a certificate of its own vote while B
// completed on the other side: X's space had two heirs (the simulation
// found it, sequence 112 with quick rounds to every reachable peer). Now
// an issuer with no live owner needs the votes of every live transfer's
// issuer too (C, the future owner of S's space), so A waits; after the
// heal one issuer inherits X's space, and no address is owned twice at
// any point.
func TestRmpeerPartitionsWithoutCommonOwner(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	s, x := openTest(t, n, pk(0), ""), openTest(t, n, pk(1), "")
	a, b, c := openTest(t, n, pk(2), ""), openTest(t, n, pk(3), ""), openTest(t, n, pk(4), "")
	all := []*Allocator{s, x, a, b, c}
	// run delivers the queue within groups (a partition); the rest is lost.
	run := func(groups ...[]*Allocator) {
		in := map[key.Public]int{}
		for i, g := range groups {
			for _, p := range g {
				in[p.self] = i + 1
			}
		}
		for len(n.queue) > 0 {
			m := n.queue[0]
			n.queue = n.queue[1:]
			if to := n.peers[m.to]; to != nil && in[m.from] != 0 && in[m.from] == in[m.to] {
				if err := to.HandleMessage(m.from, m.b); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	check := func(when string, alive ...*Allocator) {
		t.Helper()
		var views []PeerView
		for _, p := range alive {
			views = append(views, p.View())
		}
		if err := Check(views); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	if err := s.Seed(); err != nil {
		t.Fatal(err)
	}
	introduce(all...)
	run(all)
	x.WantSpace()
	run(all)
	xSpans := s.View().Ring.Spans(x.self)
	if len(xSpans) == 0 {
		t.Fatal("X was granted no space")
	}

	// S and X die; C runs rmpeer S, A and B vote for it, X never does.
	for _, d := range []*Allocator{s, x} {
		delete(n.peers, d.self)
		d.Close()
	}
	live := []*Allocator{a, b, c}
	introduce(live...)
	if err := c.RemovePeer(s.self); err != nil {
		t.Fatal(err)
	}
	run(live)
	for _, p := range live {
		if tr := p.View().Ring.transfersOf(s.self); len(tr) != 1 || tr[0].Done {
			t.Fatalf("%s: transfers of S %+v, want C's pending (X, an owner, never votes)", p.self.Name(), tr)
		}
	}

	// The split; A and B each run rmpeer X.
	p1, p2 := []*Allocator{a}, []*Allocator{b, c}
	introduce(p1...)
	introduce(p2...)
	for _, p := range []*Allocator{a, b} {
		if err := p.RemovePeer(x.self); err != nil {
			t.Fatalf("rmpeer X by %s: %v", p.self.Name(), err)
		}
	}
	for range 5 {
		for _, p := range live {
			p.Tick()
		}
		run(p1, p2)
	}
	for _, tr := range a.View().Ring.transfersOf(x.self) {
		if tr.Issuer == a.self && tr.Done {
			t.Errorf("A completed the transfer of X alone in its part, on a certificate of %d votes", len(tr.Cert))
		}
	}
	check("during the split", live...)

	// The heal: one heir of X for everyone.
	introduce(live...)
	for range 10 {
		for _, p := range live {
			p.Gossip()
		}
		run(live)
		for _, p := range live {
			p.Tick()
		}
		run(live)
	}
	check("after the heal", live...)
	r0 := a.View().Ring
	for _, p := range live {
		r := p.View().Ring
		if !r.Equal(r0) {
			t.Fatalf("rings differ after the heal:\n%s", ringDiff(r0, r))
		}
		for _, d := range []*Allocator{s, x} {
			if sp := r.Spans(d.self); len(sp) > 0 {
				t.Errorf("%s: dead %s still owns %v", p.self.Name(), d.self.Name(), sp)
			}
		}
	}
}
