package ipam

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// thousandOwners opens a peer seeding 10.32.0.0/12 that has granted
// space to 1,000 made-up owners, and a joiner holding its ring.
func thousandOwners(t *testing.T) (*loopNet, *Allocator, *Allocator) {
	t.Helper()
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openWide(t, n, pk(0))
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	grantToMadeUpOwners(t, n, a, 1000)
	b := openWide(t, n, pk(1))
	a.SendRing(b.self, false)
	n.run(t)
	if !b.View().Ring.Equal(a.View().Ring) {
		t.Fatal("setting up: b should hold a's ring")
	}
	a.SetPeers([]key.Public{b.self})
	b.SetPeers([]key.Public{a.self})
	return n, a, b
}

// wholeRingBytes is what a's whole ring costs in parts.
func wholeRingBytes(a *Allocator) uint64 {
	msgs, _ := ringParts(a.View().Ring, nil, false, false)
	var n uint64
	for _, m := range msgs {
		n += uint64(len(m))
	}
	return n
}

// TestGrantAnswerSize (issue 18): at 1,000 owners a requester whose ring
// lags its donor's by one change gets its grant and that change, a small
// part of the ring, where every grant used to be answered with the whole
// ring; the two rings agree after it.
func TestGrantAnswerSize(t *testing.T) {
	n, a, b := thousandOwners(t)
	// A grant to another peer that b misses.
	a.mu.Lock()
	var other key.Public
	other[0], other[31] = 0x7f, 0xee
	if err := a.ring.Grant(a.self, other, Span{a.span.First + 1024*1001, a.span.First + 1024*1001 + 255}); err != nil {
		a.mu.Unlock()
		t.Fatal(err)
	}
	a.ringChangedLocked()
	a.mu.Unlock()
	n.queue = nil
	whole := wholeRingBytes(a)
	before := a.Status().Counters["ipam_sent_bytes"]
	b.WantSpace()
	n.run(t)
	if len(b.View().Ring.Spans(b.self)) == 0 {
		t.Fatalf("b owns nothing after its request (counters %v)", b.Status().Counters)
	}
	if !b.View().Ring.Equal(a.View().Ring) {
		t.Fatal("b's ring differs from its donor's after the grant")
	}
	got := a.Status().Counters["ipam_sent_bytes"] - before
	t.Logf("1,000 owners: whole ring %d bytes; the donor sent %d for the request (its broadcast to b included)", whole, got)
	if c := a.Status().Counters; c["ipam_grant_answered_change"] != 1 || c["ipam_grant_answered_whole"] != 0 {
		t.Fatalf("donor counters %v", c)
	}
	if got*10 > whole {
		t.Errorf("the donor sent %d bytes for one grant; the whole ring is %d", got, whole)
	}
}

// TestGrantAnswerWithoutDigest: a request with no digest before it (a
// peer from before digests came with requests, or the digest lost) is
// answered with the whole ring, and the requester owns its grant.
func TestGrantAnswerWithoutDigest(t *testing.T) {
	n, a, b := thousandOwners(t)
	b.mu.Lock()
	b.wantSpace, b.reqDonor, b.reqAt = true, a.self, b.now()
	b.mu.Unlock()
	if err := a.HandleMessage(b.self, AppendRequestMessage(nil, a.View().Ring.Seed)); err != nil {
		t.Fatal(err)
	}
	n.run(t)
	if c := a.Status().Counters; c["ipam_grant_answered_whole"] != 1 {
		t.Fatalf("donor counters %v", c)
	}
	if len(b.View().Ring.Spans(b.self)) == 0 || !b.View().Ring.Equal(a.View().Ring) {
		t.Fatal("b does not own its grant, or holds another ring")
	}
}

// TestGrantOfNoFreeAddressTaken: a peer granted a span holding only a
// reserved address (no free address in it) takes the grant all the same,
// and the next request it makes is granted space. Its free count stayed
// the one its granter wrote (0), so it never wrote the entry, and a donor
// took that for a grant not yet taken (grantUntakenLocked) and answered
// every request with its ring: the peer asked for space forever
// (TestSimulation with the quick digest rounds' message order).
func TestGrantOfNoFreeAddressTaken(t *testing.T) {
	net := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openTest(t, net, pk(0), "")
	b := openTest(t, net, pk(1), "")
	introduce(a, b)
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	a.SendRing(b.self, false)
	net.run(t)
	reserved := a2u(netip.MustParseAddr("10.32.0.1"))
	a.mu.Lock()
	err := a.ring.Grant(a.self, b.self, Span{reserved, reserved})
	o, _ := a.ringChangedLocked()
	a.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	a.flush(o)
	net.run(t)
	if got := b.View().Ring.Spans(b.self); len(got) != 1 || got[0].Size() != 1 {
		t.Fatalf("setting up: b owns %v, want the reserved address alone", got)
	}
	var err2 error
	for range 5 {
		b.Tick()
		net.run(t)
		if _, err2 = b.Allocate("c"); err2 == nil {
			break
		}
		net.run(t)
		b.mu.Lock()
		b.reqAt = b.reqAt.Add(-time.Minute) // the request times out
		b.mu.Unlock()
	}
	if err2 != nil {
		t.Fatalf("b cannot allocate: %v (a's counters %v)", err2, a.Counters())
	}
	if got := a.Counters()["ipam_request_grant_resent"]; got != 0 {
		t.Errorf("a answered %d requests with its ring (counters %v)", got, a.Counters())
	}
}
