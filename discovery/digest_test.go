package discovery

import (
	"encoding/hex"
	"reflect"
	"slices"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// TestDigestGolden pins the digest encoding.
func TestDigestGolden(t *testing.T) {
	k := seqKey(1)
	b := AppendDigestMessage(nil, digestReply, []DigestEntry{{Key: k, Version: 0x0102030405060708}})
	want := "06" + "02" + "0001" + hex.EncodeToString(k[:]) + "0102030405060708"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	flags, entries, err := ParseDigestMessage(b)
	if err != nil || flags != digestReply || len(entries) != 1 || entries[0].Key != seqKey(1) || entries[0].Version != 0x0102030405060708 {
		t.Fatalf("parsed flags %d entries %v err %v", flags, entries, err)
	}
}

func TestParseDigestRejects(t *testing.T) {
	good := AppendDigestMessage(nil, 0, []DigestEntry{{Key: seqKey(1), Version: 1}})
	tooMany := AppendDigestMessage(nil, 0, nil)
	tooMany[2], tooMany[3] = 0xff, 0xff
	for name, b := range map[string][]byte{
		"empty":      nil,
		"other type": append([]byte{msgRecords}, good[1:]...),
		"bad flags":  append([]byte{msgDigest, 4}, good[2:]...),
		"truncated":  good[:len(good)-1],
		"trailing":   append(slices.Clone(good), 0),
		"too many":   tooMany,
	} {
		if _, _, err := ParseDigestMessage(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func FuzzParseDigestMessage(f *testing.F) {
	f.Add(AppendDigestMessage(nil, digestMore, []DigestEntry{{Key: seqKey(1), Version: 7}, {}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		flags, entries, err := ParseDigestMessage(b)
		if err != nil {
			return
		}
		if again := AppendDigestMessage(nil, flags, entries); !slices.Equal(again, b) {
			t.Fatalf("round trip changed the message:\n%x\n%x", b, again)
		}
	})
}

// digestRouter is a router that is not started, with records of keys
// seqKey(10..13) at versions 5 and a connection c whose queue the test
// reads.
func digestRouter(t *testing.T) (*Router, *conn) {
	t.Helper()
	r, err := New(Config{Private: newKey(t), Port: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := byte(10); i < 14; i++ {
		r.recs[seqKey(i)] = &entry{rec: Record{Key: seqKey(i), Version: 5}}
	}
	c := &conn{r: r, peer: seqKey(10)}
	r.active[c.peer] = c
	return r, c
}

// sent drains c's queue: the keys of the records and the digests in it.
func sent(t *testing.T, c *conn) (recs []key.Public, digests int) {
	t.Helper()
	for _, m := range drain(c) {
		switch m[0] {
		case msgRecords:
			rs, err := ParseRecordsMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range rs {
				recs = append(recs, rec.Key)
			}
		case msgDigest:
			digests++
		}
	}
	slices.SortFunc(recs, cmpKey)
	return recs, digests
}

// A digest is answered with exactly the records its sender lacks or holds
// at a lower version, and, when it asks for a reply, with our digest only
// if it holds something newer than ours.
func TestDigestSendsWhatTheSenderLacks(t *testing.T) {
	r, c := digestRouter(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	digest := []DigestEntry{
		{r.self, r.selfRec.Version}, // ours, current
		{seqKey(10), 5},             // same
		{seqKey(11), 4},             // older: we send ours
		{seqKey(13), 9},             // newer than ours
		// seqKey(12) absent: we send it
	}
	if err := r.handleDigestLocked(c, AppendDigestMessage(nil, 0, digest)); err != nil {
		t.Fatal(err)
	}
	recs, digests := sent(t, c)
	if want := []key.Public{seqKey(11), seqKey(12)}; !reflect.DeepEqual(recs, want) || digests != 0 {
		t.Fatalf("sent records %v and %d digests; want %v and none (no reply asked)", recs, digests, want)
	}
	if err := r.handleDigestLocked(c, AppendDigestMessage(nil, digestReply, digest)); err != nil {
		t.Fatal(err)
	}
	if _, digests := sent(t, c); digests != 1 {
		t.Fatalf("asked for a reply by a holder of a newer record: %d digests sent, want 1", digests)
	}
	digest[3].Version = 5
	if err := r.handleDigestLocked(c, AppendDigestMessage(nil, digestReply, digest)); err != nil {
		t.Fatal(err)
	}
	if _, digests := sent(t, c); digests != 0 {
		t.Fatalf("asked for a reply by a peer holding nothing newer: %d digests sent, want 0", digests)
	}
}

// While a new version of our record is pending (a connection was just
// made: selfPublishDelay gathers it with the next ones), a digest that
// lacks our record is not answered with the one we hold now: the pending
// one goes to every neighbour when it is published, and the one held now
// would be flooded to every peer of the mesh only to be replaced (a
// joiner's record with no neighbours, a version every router took for
// each join).
func TestDigestAnswerWaitsForOurPendingRecord(t *testing.T) {
	r, c := digestRouter(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	lacking := []DigestEntry{{seqKey(10), 5}, {seqKey(11), 5}, {seqKey(12), 5}, {seqKey(13), 5}}
	r.publishPending = true
	if err := r.handleDigestLocked(c, AppendDigestMessage(nil, 0, lacking)); err != nil {
		t.Fatal(err)
	}
	if recs, _ := sent(t, c); len(recs) != 0 {
		t.Fatalf("with our record's next version pending, a digest lacking ours was answered with %v; want nothing", recs)
	}
	r.publishNeighborsLocked()
	if recs, _ := sent(t, c); !slices.Equal(recs, []key.Public{r.self}) {
		t.Fatalf("publishing sent %v; want our record", recs)
	}
	// Nothing pending: a digest lacking ours is answered with it.
	if err := r.handleDigestLocked(c, AppendDigestMessage(nil, 0, lacking)); err != nil {
		t.Fatal(err)
	}
	if recs, _ := sent(t, c); !slices.Equal(recs, []key.Public{r.self}) {
		t.Fatalf("nothing pending: a digest lacking ours was answered with %v; want our record", recs)
	}
}

// A digest in parts is acted on once, at its last part, as one digest.
func TestDigestInParts(t *testing.T) {
	r, c := digestRouter(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	entries := make([]DigestEntry, maxDigestEntries+2)
	for i := range entries {
		entries[i] = DigestEntry{Key: key.Public{0xee, byte(i), byte(i >> 8)}, Version: 1}
	}
	entries[maxDigestEntries+1] = DigestEntry{seqKey(12), 5} // in the second part
	msgs := packDigest(entries, false)
	if len(msgs) != 2 {
		t.Fatalf("%d parts, want 2", len(msgs))
	}
	if err := r.handleDigestLocked(c, msgs[0]); err != nil {
		t.Fatal(err)
	}
	if recs, _ := sent(t, c); len(recs) != 0 {
		t.Fatalf("sent %v before the last part", recs)
	}
	if err := r.handleDigestLocked(c, msgs[1]); err != nil {
		t.Fatal(err)
	}
	recs, _ := sent(t, c)
	if want := []key.Public{r.self, seqKey(10), seqKey(11), seqKey(13)}; !slices.ContainsFunc(recs, func(k key.Public) bool { return k == r.self }) || len(recs) != len(want) || slices.Contains(recs, seqKey(12)) {
		t.Fatalf("sent %v; want %v (not seqKey(12), which the second part lists)", recs, want)
	}
}

// A peer that predates digests starts a connection with its full state:
// it is sent ours (once), and our anti-entropy sends it full states.
func TestLegacyPeerGetsFullState(t *testing.T) {
	r, c := digestRouter(t)
	rec := Record{Key: seqKey(20), Version: 1}
	if err := c.handle(AppendRecordsMessage(nil, []*Record{&rec})); err != nil {
		t.Fatal(err)
	}
	if recs, _ := sent(t, c); len(recs) != 5 {
		t.Fatalf("a legacy peer's first records: sent %d records, want our 5", len(recs))
	}
	c.handle(AppendRecordsMessage(nil, []*Record{&rec}))
	if recs, _ := sent(t, c); len(recs) != 0 {
		t.Fatalf("second records message: sent %d records, want none", len(recs))
	}
	r.mu.Lock()
	r.sendDigestLocked(c, true)
	r.mu.Unlock()
	if recs, digests := sent(t, c); len(recs) != 5 || digests != 0 {
		t.Fatalf("anti-entropy to a legacy peer sent %d records and %d digests, want the full state", len(recs), digests)
	}

	// A peer that starts with a digest is not legacy.
	r2, c2 := digestRouter(t)
	if err := c2.handle(AppendDigestMessage(nil, 0, []DigestEntry{{Key: seqKey(30), Version: 1}})); err != nil {
		t.Fatal(err)
	}
	sent(t, c2)
	c2.handle(AppendRecordsMessage(nil, []*Record{&rec}))
	if recs, _ := sent(t, c2); len(recs) != 0 {
		t.Fatalf("records after a digest: sent %d records, want none", len(recs))
	}
	r2.mu.Lock()
	r2.sendDigestLocked(c2, true)
	r2.mu.Unlock()
	if _, digests := sent(t, c2); digests != 1 {
		t.Fatalf("anti-entropy sent %d digests, want 1", digests)
	}
}
