package ipam

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

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

// TestRingPartsSelection: parts of the entries given by their indexes
// (ringPartsSel, what a change's broadcast and SendOwn use) are the parts
// a pass over marks made before (ringPartsWithRef, the code of Nov 30),
// byte for byte, for random selections of a ring of 1,000 owners (runs
// longer than a part included).
func TestRingPartsSelection(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openWide(t, n, pk(0))
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	grantToMadeUpOwners(t, n, a, 1000)
	r := a.View().Ring
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 200 {
		marks := make([]bool, len(r.Entries))
		p := []float64{0, 0.01, 0.3, 0.9, 1}[round%5]
		for i := range marks {
			marks[i] = rng.Float64() < p
		}
		if round%7 == 0 {
			for i := range 700 {
				marks[(round*13+i)%len(marks)] = true // a long run
			}
		}
		var vt *Ring
		if round%2 == 0 {
			vt = r
		}
		want, err := ringPartsWithRef(r, marks, vt, round%3 == 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ringPartsWith(r, marks, vt, round%3 == 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("round %d: %d parts, want %d", round, len(got), len(want))
		}
		for k := range got {
			if !bytes.Equal(got[k], want[k]) {
				t.Fatalf("round %d: part %d differs", round, k)
			}
		}
	}
	if _, err := ringPartsWith(r, nil, nil, false); err != nil {
		t.Fatal(err)
	}
	all, _ := ringPartsWith(r, nil, r, false)
	ref, _ := ringPartsWithRef(r, nil, r, false)
	if len(all) != len(ref) {
		t.Fatalf("whole ring: %d parts, want %d", len(all), len(ref))
	}
	for k := range all {
		if !bytes.Equal(all[k], ref[k]) {
			t.Fatalf("whole ring: part %d differs", k)
		}
	}
}

// ringPartsWithRef is ringPartsWith as it was (Nov 30, before ringPartsSel).
func ringPartsWithRef(r *Ring, send []bool, vt *Ring, relay bool) ([][]byte, error) {
	var out [][]byte
	part := &RingPart{Ring: &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used}, Relay: relay}
	flush := func() error {
		if len(part.Ring.Entries) == 0 {
			return nil
		}
		msg, err := AppendRingPartMessage(nil, part)
		if err != nil {
			return err
		}
		out = append(out, msg)
		part = &RingPart{Ring: &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used}, Relay: relay}
		return nil
	}
	n := len(r.Entries)
	for i := 0; i < n; {
		if send != nil && !send[i] {
			i++
			continue
		}
		j := i
		for j < n && (send == nil || send[j]) && j-i < maxPartEntries-1 {
			j++
		}
		// Entries i..j-1, and entry j as their bound unless j is the end.
		size := j - i
		if j < n {
			size++
		}
		if len(part.Ring.Entries)+size > maxPartEntries {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		part.Ring.Entries = append(part.Ring.Entries, r.Entries[i:j]...)
		part.Bound = append(part.Bound, make([]bool, j-i)...)
		if j < n {
			part.Ring.Entries = append(part.Ring.Entries, r.Entries[j])
			part.Bound = append(part.Bound, true)
		}
		i = j
		if j < n && (send == nil || send[j]) {
			// A stretch cut at maxPartEntries: the next part starts at its
			// bound, which may not share a part with it.
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	// Last part first. A part's bound is the next part's first entry; a
	// receiver takes a bound only as a token it already holds, so a new
	// token at the end of a part (a grant, with the end its granter
	// inserted as the bound) was refused as unbounded when the parts came
	// in ring order, and never retried: a joiner given its grant there
	// owned nothing after any number of its donor's rings. In reverse
	// order the bound has arrived (on one connection, in order) when the
	// part that ends at it does.
	slices.Reverse(out)
	if vt != nil {
		vs, err := votesParts(r, vt.Votes, vt.Transfers, relay)
		if err != nil {
			return nil, err
		}
		out = append(out, vs...)
	}
	return out, nil
}

// TestAssembledRingKeepsGrantEnds: a joiner puts its first ring together
// from parts of different moments (a change broadcast, an older part of
// the ring), and takes no token without the token that ended its span in
// the part that brought it, as a merge takes none (entryPassLocked). It
// took Y's grant without X's, granted just before and ending Y's: in its
// ring Y owned X's space, and passed on, that ring made X refuse its own
// grant from everyone, forever (TestJoinInBatchesLate with control
// neighbours: a first batch's grantee without its grant after 60 s).
func TestAssembledRingKeepsGrantEnds(t *testing.T) {
	now := time.Unix(1e9, 0)
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	open := func(i int) *Allocator {
		self := pk(i)
		a, err := Open(Config{Self: self, Private: privOf(self), Range: netip.MustParsePrefix("10.32.0.0/12"), NoSync: true,
			Transport: loopTransport{n, self}, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		n.peers[self] = a
		t.Cleanup(func() { a.Close() })
		return a
	}
	a, x, y, j := open(0), open(1), open(2), open(3)
	introduce(a, x, y, j)
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	grant := func(to key.Public, first, last string) {
		t.Helper()
		a.mu.Lock()
		defer a.mu.Unlock()
		if err := a.ring.Grant(a.self, to, Span{a2u(netip.MustParseAddr(first)), a2u(netip.MustParseAddr(last))}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.ringChangedLocked(); err != nil {
			t.Fatal(err)
		}
		n.queue = nil // lost: the peers learn of it only as this test says
	}
	var w key.Public // a made-up owner (never signs here)
	w[0], w[31] = 0xee, 0xee
	grant(w, "10.44.0.0", "10.47.255.255")
	r1 := a.View().Ring
	a.SendRing(x.self, false) // x holds the ring as it is now
	a.SendRing(y.self, false)
	n.run(t)
	grant(x.self, "10.40.0.0", "10.43.255.255") // x's answer lost
	grant(y.self, "10.36.0.0", "10.39.255.255") // y's span ends at x's token
	r3 := a.View().Ring
	at := func(r *Ring, addr string) []bool {
		marks := make([]bool, len(r.Entries))
		marks[r.find(a2u(netip.MustParseAddr(addr)))] = true
		return marks
	}
	// j, with no ring yet, gets y's grant as it was broadcast (its end
	// x's token, a bound), a's own entry from before both grants (ending
	// at w's token) and w's entry: together they cover the range.
	var msgs [][]byte
	for _, p := range []struct {
		r    *Ring
		addr string
	}{{r3, "10.36.0.0"}, {r1, "10.32.0.0"}, {r3, "10.44.0.0"}} {
		m, err := ringParts(p.r, at(p.r, p.addr), false, false)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m...)
	}
	for _, m := range msgs {
		if err := j.HandleMessage(a.self, m); err != nil {
			t.Fatal(err)
		}
	}
	jr := j.View().Ring
	if !jr.Seeded() {
		t.Fatal("setting up: j should have put a ring together")
	}
	has := func(r *Ring, addr string) bool {
		k := r.find(a2u(netip.MustParseAddr(addr)))
		return k >= 0 && r.Entries[k].Token == a2u(netip.MustParseAddr(addr))
	}
	if has(jr, "10.36.0.0") && !has(jr, "10.40.0.0") {
		t.Errorf("j's ring holds y's grant without its end (x's token): y owns x's space there")
	}
	// x hears from j, then from a, its granter, every few seconds.
	j.SendDigest(x.self)
	n.run(t)
	for range 10 {
		now = now.Add(5 * time.Second)
		for _, p := range []*Allocator{a, x, y, j} {
			p.Tick()
		}
		a.SendDigest(x.self)
		n.run(t)
	}
	if !x.View().Ring.Equal(a.View().Ring) || !has(x.View().Ring, "10.40.0.0") {
		t.Fatalf("x never took its grant (10.40.0.0 from a): counters %v", x.Status().Counters)
	}
}
