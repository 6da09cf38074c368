package discovery

import (
	"encoding/hex"
	"reflect"
	"slices"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

func TestEntryListGolden(t *testing.T) {
	k := seqKey(1)
	b := AppendEntryList(nil, msgWant, []DigestEntry{{Key: k, Version: 0x0102030405060708}})
	want := "08" + "0001" + hex.EncodeToString(k[:]) + "0102030405060708"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if _, err := ParseEntryList(b, msgHave); err == nil {
		t.Error("a want parsed as a have")
	}
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"truncated": b[:len(b)-1],
		"trailing":  append(slices.Clone(b), 0),
		"too many":  {msgWant, 0xff, 0xff},
	} {
		if _, err := ParseEntryList(bad, msgWant); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func FuzzParseEntryList(f *testing.F) {
	f.Add(AppendEntryList(nil, msgHave, []DigestEntry{{Key: seqKey(1), Version: 7}, {}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		entries, err := ParseEntryList(b, b[0])
		if err != nil {
			return
		}
		if again := AppendEntryList(nil, b[0], entries); !slices.Equal(again, b) {
			t.Fatalf("round trip changed the message:\n%x\n%x", b, again)
		}
	})
}

// drain returns the messages queued on c, gossip then channel (the
// order the writer takes them).
func drain(c *conn) [][]byte {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	out := append(c.q, c.cq...) // in the writer's order
	c.q, c.cq, c.cqBytes = nil, nil, 0
	return out
}

// A record new to us goes on to neighbours that know haves as a have, to
// others whole; ours goes whole to everyone. A have of a record we lack
// is answered with one want, not one per neighbour that announces it, and
// a want with the record.
func TestHaveWant(t *testing.T) {
	r, a := digestRouter(t) // a: the neighbour seqKey(10)
	b := &conn{r: r, peer: seqKey(11), speaksDigest: true}
	old := &conn{r: r, peer: seqKey(12)}
	a.speaksDigest = true
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active[b.peer], r.active[old.peer] = b, old

	xPriv := newKey(t)
	x := Record{Key: xPriv.Public(), Version: 9, Nickname: "x"}
	x.Sign(xPriv)
	r.mergeRecordsLocked(a, []Record{x}, nil)
	if m := drain(b); len(m) != 0 {
		t.Fatalf("a have went out at once (%d messages); haves wait to be gathered", len(m))
	}
	r.flushHavesLocked()
	if m := drain(b); len(m) != 1 || m[0][0] != msgHave {
		t.Fatalf("a neighbour that knows haves got %d messages, first of type %v; want one have", len(m), m)
	}
	if m := drain(old); len(m) != 1 || m[0][0] != msgRecords {
		t.Fatalf("a legacy neighbour got %d messages; want the record whole", len(m))
	}
	if m := drain(a); len(m) != 0 {
		t.Fatalf("the record went back to its sender: %d messages", len(m))
	}
	r.mu.Unlock()
	r.bumpSelfLockedForTest()
	r.mu.Lock()
	r.floodLocked(nil, []*Record{r.copySelf()})
	for _, c := range []*conn{a, b, old} {
		if m := drain(c); len(m) != 1 || m[0][0] != msgRecords {
			t.Fatalf("our own record to %s: %d messages; want it whole", c.peer.Name(), len(m))
		}
	}

	// Haves of y from a and b: one want, to a.
	yPriv := newKey(t)
	y := Record{Key: yPriv.Public(), Version: 4, Nickname: "y"}
	y.Sign(yPriv)
	have := AppendEntryList(nil, msgHave, []DigestEntry{{y.Key, 4}, {x.Key, 9}})
	if err := r.handleHaveLocked(a, have); err != nil {
		t.Fatal(err)
	}
	if err := r.handleHaveLocked(b, have); err != nil {
		t.Fatal(err)
	}
	ma, mb := drain(a), drain(b)
	if len(ma) != 1 || len(mb) != 0 {
		t.Fatalf("haves from two neighbours: %d messages to the first, %d to the second; want one want to the first", len(ma), len(mb))
	}
	asked, err := ParseEntryList(ma[0], msgWant)
	if err != nil || !reflect.DeepEqual(asked, []DigestEntry{{y.Key, 4}}) {
		t.Fatalf("wanted %v (%v); want only y, which we lack", asked, err)
	}

	// Unanswered: after wantRetry it is asked of b.
	r.retryWantsLocked(r.now().Add(wantRetry))
	if mb := drain(b); len(mb) != 1 || mb[0][0] != msgWant {
		t.Fatalf("after %v without an answer: %d messages to the second source; want a want", wantRetry, len(mb))
	}
	// Answered: the want is done.
	r.mergeRecordsLocked(b, []Record{y}, nil)
	if r.wants[y.Key] != nil {
		t.Error("want still pending after the record arrived")
	}

	// A want is answered with what we hold at that version or later.
	if err := r.handleWantLocked(b, AppendEntryList(nil, msgWant, []DigestEntry{{y.Key, 4}, {x.Key, 10}, {key.Public{1}, 1}})); err != nil {
		t.Fatal(err)
	}
	recs, _ := sent(t, b)
	if !reflect.DeepEqual(recs, []key.Public{y.Key}) {
		t.Fatalf("answered a want with %v; want y only (x is older than asked, the third unknown)", recs)
	}
}

// Records that arrive within haveDelay of each other go to a neighbour
// as one have, each record once at its newest version: a join's record
// versions cost a neighbour a few frames, not one each.
func TestHavesGathered(t *testing.T) {
	r, a := digestRouter(t)
	b := &conn{r: r, peer: seqKey(11), speaksDigest: true}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active[b.peer] = b
	var keys []key.Public
	privs := []key.Private{newKey(t), newKey(t), newKey(t)}
	for v := range uint64(3) {
		for _, p := range privs {
			rec := Record{Key: p.Public(), Version: 10 + v, Nickname: "p"}
			rec.Sign(p)
			r.mergeRecordsLocked(a, []Record{rec}, nil)
			if v == 0 {
				keys = append(keys, rec.Key)
			}
		}
	}
	if m := drain(b); len(m) != 0 {
		t.Fatalf("%d messages before the flush", len(m))
	}
	r.flushHavesLocked()
	m := drain(b)
	if len(m) != 1 {
		t.Fatalf("nine record versions of three peers: %d messages; want one have", len(m))
	}
	got, err := ParseEntryList(m[0], msgHave)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(keys, cmpKey)
	var want []DigestEntry
	for _, k := range keys {
		want = append(want, DigestEntry{k, 12})
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("have lists %v; want each record once at version 12", got)
	}
	r.flushHavesLocked()
	if m := drain(b); len(m) != 0 {
		t.Fatalf("a second flush sent %d messages", len(m))
	}
}

// A have does not go back to a neighbour that told us it holds that
// version: the one the record came from, and one whose own have of it
// arrived before our flush (at 100 simulated routers over a third of a
// join's have entries told a neighbour of a version it had announced). An
// older version's have does not count, and what a neighbour told us is
// forgotten after a while.
func TestHaveNotSentToItsAnnouncer(t *testing.T) {
	r, a := digestRouter(t) // a: the neighbour seqKey(10)
	b := &conn{r: r, peer: seqKey(11), speaksDigest: true}
	c := &conn{r: r, peer: seqKey(12), speaksDigest: true}
	d := &conn{r: r, peer: seqKey(13), speaksDigest: true}
	a.speaksDigest = true
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active[b.peer], r.active[c.peer], r.active[d.peer] = b, c, d

	xPriv := newKey(t)
	x := Record{Key: xPriv.Public(), Version: 9, Nickname: "x"}
	x.Sign(xPriv)
	// b announces x, is asked for it and sends it; c announces it too,
	// d announces an older version.
	if err := r.handleHaveLocked(b, AppendEntryList(nil, msgHave, []DigestEntry{{x.Key, 9}})); err != nil {
		t.Fatal(err)
	}
	r.mergeRecordsLocked(b, []Record{x}, nil)
	if err := r.handleHaveLocked(c, AppendEntryList(nil, msgHave, []DigestEntry{{x.Key, 9}})); err != nil {
		t.Fatal(err)
	}
	if err := r.handleHaveLocked(d, AppendEntryList(nil, msgHave, []DigestEntry{{x.Key, 8}})); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*conn{a, b, c, d} {
		drain(n)
	}
	r.flushHavesLocked()
	for _, n := range []*conn{b, c} {
		if m := drain(n); len(m) != 0 {
			t.Errorf("%s, which told us it holds x at 9, was sent %d messages", n.peer.Name(), len(m))
		}
	}
	for _, n := range []*conn{a, d} {
		if m := drain(n); len(m) != 1 || m[0][0] != msgHave {
			t.Errorf("%s, which did not announce x at 9, was sent %d messages; want a have", n.peer.Name(), len(m))
		}
	}
	if got := r.ctr[CtrHavesSent].Load(); got != 2 {
		t.Errorf("gossip_haves_sent %d, want 2", got)
	}

	// Aged twice, c's word is forgotten: x's next version goes to it.
	r.forgetHeardLocked()
	r.forgetHeardLocked()
	x.Version = 10
	x.Sign(xPriv)
	r.mergeRecordsLocked(b, []Record{x}, nil)
	r.flushHavesLocked()
	if m := drain(c); len(m) != 1 {
		t.Errorf("after heardFor twice, c got %d messages for a new version; want a have", len(m))
	}
	if m := drain(b); len(m) != 0 {
		t.Errorf("the sender of the new version got %d messages", len(m))
	}
}
