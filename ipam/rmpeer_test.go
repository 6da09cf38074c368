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
	for _, a := range all {
		var others []key.Public
		for _, b := range all {
			if b != a {
				others = append(others, b.self)
			}
		}
		a.SetPeers(others)
	}
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
