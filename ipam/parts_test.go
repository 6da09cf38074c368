package ipam

import (
	"net/netip"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

func openWide(t *testing.T, n *loopNet, self key.Public) *Allocator {
	t.Helper()
	a, err := Open(Config{Self: self, Private: privOf(self), Range: netip.MustParsePrefix("10.32.0.0/12"), NoSync: true,
		Transport: loopTransport{n, self}})
	if err != nil {
		t.Fatal(err)
	}
	n.peers[self] = a
	t.Cleanup(func() { a.Close() })
	return a
}

// grantToMadeUpOwners has a, which seeded 10.32.0.0/12, grant a span of 512
// addresses to each of owners made-up owners, whose keys it returns (owners
// never sign here: any distinct key), and saves a's ring; what that sent is
// dropped from n.
func grantToMadeUpOwners(t *testing.T, n *loopNet, a *Allocator, owners int) []key.Public {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	base := a.span.First
	keys := make([]key.Public, 0, owners)
	for i := 1; i <= owners; i++ {
		var owner key.Public
		owner[0], owner[1], owner[31] = byte(i>>8), byte(i), 0xee
		keys = append(keys, owner)
		if err := a.ring.Grant(a.self, owner, Span{base + uint32(i)*1024, base + uint32(i)*1024 + 511}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.ringChangedLocked(); err != nil {
		t.Fatal(err)
	}
	n.queue = nil
	return keys
}

// TestThousandOwnerRing (issue 18): a ring of 1,000 owners is larger than
// one message. It reaches a peer with no ring as parts, each within
// MaxMessage, and that peer puts together exactly the sender's ring; a
// later grant goes out as the change alone, a few hundred bytes, not the
// ring again.
func TestThousandOwnerRing(t *testing.T) {
	const owners = 1000
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openWide(t, n, pk(0))
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.ring.Used = true
	a.mu.Unlock()
	grantToMadeUpOwners(t, n, a, owners)
	entries := len(a.View().Ring.Entries)
	if whole, err := AppendRingMessage(nil, a.View().Ring); err != nil || len(whole) <= MaxMessage {
		t.Fatalf("the test ring (%d bytes, %v) should not fit one message", len(whole), err)
	}

	b := openWide(t, n, pk(1))
	a.SendRing(b.self, false)
	parts := len(n.queue)
	for _, m := range n.queue {
		if len(m.b) > MaxMessage {
			t.Fatalf("a part of %d bytes", len(m.b))
		}
	}
	n.run(t)
	if parts < 2 {
		t.Fatalf("%d entries went in %d message", entries, parts)
	}
	if !b.View().Ring.Equal(a.View().Ring) {
		t.Fatalf("the joiner put together another ring than the sender's (%d parts)", parts)
	}
	t.Logf("%d entries, %d owners: %d parts", entries, owners+1, parts)

	// b asks for space: a grants, and everyone else hears the change
	// alone (b gets a's ring, in parts: its own may be older, messages.go).
	c := openWide(t, n, pk(2))
	a.SendRing(c.self, false)
	n.run(t)
	a.SetPeers([]key.Public{b.self, c.self})
	b.SetPeers([]key.Public{a.self, c.self})
	c.SetPeers([]key.Public{a.self, b.self})
	if _, err := b.Allocate("c"); err == nil {
		t.Fatal("b allocated before it owned space")
	}
	toC := 0
	for len(n.queue) > 0 {
		m := n.queue[0]
		n.queue = n.queue[1:]
		if m.to == c.self {
			toC++
			if len(m.b) > 2000 {
				t.Errorf("a message of %d bytes to a third peer after one grant", len(m.b))
			}
		}
		if len(m.b) > MaxMessage {
			t.Errorf("a message of %d bytes", len(m.b))
		}
		if err := n.peers[m.to].HandleMessage(m.from, m.b); err != nil {
			t.Fatal(err)
		}
	}
	if toC == 0 {
		t.Error("the third peer heard nothing of the grant")
	}
	if _, err := b.Allocate("c"); err != nil {
		t.Fatalf("after the grant: %v", err)
	}
	n.run(t)
	if !b.View().Ring.Equal(a.View().Ring) || !c.View().Ring.Equal(a.View().Ring) {
		t.Fatal("rings differ after the grant")
	}
	for _, p := range []*Allocator{b, c} {
		if got := p.Status().Counters; got["ipam_entry_unauthorized"] != 0 || got["ipam_message_malformed"] != 0 {
			t.Fatalf("refusals between honest peers: %v", got)
		}
	}
}

// TestPartBounds: a part is refused (counted, nothing changes) when it is
// malformed: more entries than a part holds, a bound that is a run of its
// own, a run reaching the ring's end before another.
func TestPartBounds(t *testing.T) {
	r := goldenRing(t)
	good, err := ringParts(r, []bool{true, false}, false, false)
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func(b []byte) []byte) []byte {
		b := append([]byte(nil), good[0]...)
		return f(b)
	}
	runsAt := 2 + 4 + 1 + key.Len + 8 + 1 + 2 + 2*key.Len // nruns
	tests := map[string][]byte{
		"runs beyond a part":   mut(func(b []byte) []byte { b[runsAt], b[runsAt+1] = 0xff, 0xff; return b }),
		"bound alone":          mut(func(b []byte) []byte { b[runsAt+3] = 1; return b }), // run of 1 entry with end 0
		"bad end":              mut(func(b []byte) []byte { b[runsAt+4] = 2; return b }),
		"entries beyond a run": mut(func(b []byte) []byte { b[runsAt+2], b[runsAt+3] = 0x01, 0x41; return b }),
		"relay and more flags": mut(func(b []byte) []byte { b[2+4+1+key.Len+8] = 6; return b }),
		"truncated":            good[0][:len(good[0])-3],
	}
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openWide(t, n, pk(0))
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	before := a.View().Ring
	for name, b := range tests {
		if err := a.HandleMessage(pk(1), b); err == nil {
			t.Errorf("%s: taken", name)
		}
	}
	if got := a.Status().Counters["ipam_message_malformed"]; got != uint64(len(tests)) {
		t.Errorf("ipam_message_malformed = %d, want %d", got, len(tests))
	}
	if !a.View().Ring.Equal(before) {
		t.Error("a refused part changed the ring")
	}
}

// A peer that missed a broadcast of another's change (it was not
// reachable to the sender then) gets it from that peer's SendOwn, which
// carries the sender's own entries and nothing else.
func TestSendOwnBringsMissedChange(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openWide(t, n, pk(0))
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	b := openWide(t, n, pk(1))
	a.SendRing(b.self, false)
	n.run(t)
	// a changes its entry (a free count) while b hears nothing.
	if _, err := a.Allocate("c"); err != nil {
		t.Fatal(err)
	}
	a.Tick()
	n.queue = nil
	if b.View().Ring.Equal(a.View().Ring) {
		t.Fatal("b holds a's change although its broadcast was lost: the test shows nothing")
	}
	a.SendOwn(b.self)
	if len(n.queue) != 1 {
		t.Fatalf("SendOwn queued %d messages, want 1", len(n.queue))
	}
	m, err := ParseMessage(n.queue[0].b)
	if err != nil || m.Part == nil {
		t.Fatalf("SendOwn sent %+v (%v), want a ring part", m, err)
	}
	for _, e := range m.Part.Ring.Entries {
		if e.Owner != a.self {
			t.Fatalf("SendOwn sent an entry of %s", e.Owner.Name())
		}
	}
	n.run(t)
	if !b.View().Ring.Equal(a.View().Ring) {
		t.Fatal("after SendOwn b's ring still differs from a's")
	}
}
