package discovery

import (
	"maps"
	"net"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// A peer at its limit refers a dialler with its own record and its
// neighbours' only, not every record it holds (about 1 MB at 1,000
// peers for each refused handshake).
func TestReferralHoldsNeighboursOnly(t *testing.T) {
	r, err := New(Config{Private: newKey(t), Secret: testSecret, Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := newMeshView(40)
	m.ks[0] = r.self
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; i < 40; i++ {
		m.nb[i][(i%39)+1] = true
		r.mergeRecordsLocked(nil, []Record{*m.record(i)}, []sigCheck{sigGood})
	}
	want := map[key.Public]bool{r.self: true}
	for _, j := range []int{3, 17, 25} {
		a, _ := net.Pipe()
		c := &conn{r: r, nc: a, peer: m.ks[j], done: make(chan struct{})}
		r.conns[c] = struct{}{}
		if err := r.addConnLocked(c); err != nil {
			t.Fatal(err)
		}
		want[m.ks[j]] = true
	}
	got := map[key.Public]bool{}
	for _, rec := range r.referralLocked() {
		got[rec.Key] = true
	}
	if !maps.Equal(got, want) {
		t.Fatalf("the referral holds %d records, want ours and our 3 neighbours'", len(got))
	}
}
