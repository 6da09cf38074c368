package discovery

import (
	"errors"
	"testing"
	"time"
)

// checkSummary fails unless r's kept summary is the one of the records
// its digest lists now.
func checkSummary(t *testing.T, r *Router, when string) {
	t.Helper()
	r.mu.Lock()
	var want summary
	for _, e := range r.digestLocked() {
		want.sum += reachFingerprint(e.Key, e.Version)
		want.count++
	}
	got := r.summary
	r.mu.Unlock()
	if got != want {
		t.Fatalf("%s: the kept summary is %+v, the digest's %+v", when, got, want)
	}
}

func TestParseSummaryRejects(t *testing.T) {
	good := appendSummary(nil, summaryReply, 3, 0xabc)
	if f, n, s, err := parseSummary(good); err != nil || f != summaryReply || n != 3 || s != 0xabc {
		t.Fatalf("round trip: %v %v %v %v", f, n, s, err)
	}
	for name, tc := range map[string]struct {
		b   []byte
		err error
	}{
		"short":    {good[:summaryLen-1], errShort},
		"trailing": {append(append([]byte{}, good...), 0), errTrailing},
		"flags":    {appendSummary(nil, 2, 3, 0xabc), errBadFlags},
		"type":     {append([]byte{msgDigest}, good[1:]...), errBadType},
	} {
		if _, _, _, err := parseSummary(tc.b); !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", name, err, tc.err)
		}
	}
}

// Anti-entropy between two peers that agree costs a summary a round, not
// a digest of every record; when they differ, the summary starts a digest
// round, which repairs what is missing.
func TestAntiEntropyBySummary(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	if err := b.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a and b reach each other", func() bool { return len(a.Reachable()) == 2 && len(b.Reachable()) == 2 })
	ctr := func(r *testRouter, name string) uint64 { return r.Counters()[name] }
	waitFor(t, 10*time.Second, "a summary round each way", func() bool {
		return ctr(a, CtrSummariesReceived) >= 2 && ctr(b, CtrSummariesReceived) >= 2
	})
	digests := ctr(a, CtrDigestsReceived) + ctr(b, CtrDigestsReceived)
	rounds := ctr(a, CtrAntiEntropy) + ctr(b, CtrAntiEntropy)
	waitFor(t, 30*time.Second, "ten more rounds", func() bool { return ctr(a, CtrAntiEntropy)+ctr(b, CtrAntiEntropy) >= rounds+10 })
	if got := ctr(a, CtrDigestsReceived) + ctr(b, CtrDigestsReceived); got != digests {
		t.Fatalf("ten anti-entropy rounds between peers that agree received %d digests; want none", got-digests)
	}
	// A record a holds and b lacks (taken without flooding it, as if
	// its flood were lost): a round repairs it.
	p := newKey(t)
	rec := Record{Key: p.Public(), Version: 7, Nickname: "lost"}
	rec.Sign(p)
	a.mu.Lock()
	a.recs[rec.Key] = &entry{rec: rec, unreachableSince: a.now()}
	a.unreach[rec.Key] = struct{}{}
	a.graphSetLocked(rec.Key)
	a.mu.Unlock()
	checkSummary(t, a.Router, "a record taken")
	waitFor(t, 30*time.Second, "b has the record a round repaired", func() bool {
		_, ok := b.peer(rec.Key)
		return ok
	})
}
