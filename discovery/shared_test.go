package discovery

import (
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// Routers given one SharedRecords hold one copy of a record version's
// lists; a different record under the same key and version (another
// signature) is not taken for it, and a newer version replaces the copy.
func TestSharedRecordsShareLists(t *testing.T) {
	shared := NewSharedRecords()
	newRouter := func() *Router {
		r, err := New(Config{Private: newKey(t), Secret: testSecret, Shared: shared})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	a, b := newRouter(), newRouter()
	priv := newKey(t)
	rec := Record{Key: priv.Public(), Version: 7, Neighbors: []Neighbor{{Key: key.Public{1}, Established: true}, {Key: key.Public{2}, Established: true}}}
	rec.Sign(priv)
	merge := func(r *Router, rec Record) []Neighbor {
		// Each router parses its own copy off the wire.
		recs, err := ParseRecordsMessage(packRecords([]*Record{&rec})[0])
		if err != nil {
			t.Fatal(err)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.mergeRecordsLocked(nil, recs, nil)
		if e := r.recs[rec.Key]; e != nil {
			return e.rec.Neighbors
		}
		return nil
	}
	na, nb := merge(a, rec), merge(b, rec)
	if len(na) != 2 || &na[0] != &nb[0] {
		t.Fatalf("two routers hold separate copies of one record's neighbours (%d, %d)", len(na), len(nb))
	}
	// A newer version replaces the shared copy; a router that takes it
	// later shares it, and the old version's holder keeps its own lists.
	newer := rec
	newer.Version = 8
	newer.Neighbors = newer.Neighbors[:1]
	newer.Sign(priv)
	n8a := merge(a, newer)
	n8b := merge(b, newer)
	if len(n8a) != 1 || &n8a[0] != &n8b[0] {
		t.Fatal("the newer version is not shared")
	}
	if len(na) != 2 || na[1].Key != (key.Public{2}) {
		t.Fatal("the old version's lists changed under their holder")
	}
	// A record of the same key and version with another signature (the
	// router refuses it before, by its signature) is not one record.
	other := newer
	other.Neighbors = []Neighbor{{Key: key.Public{9}, Established: true}}
	other.Sig[0] ^= 1
	shared.intern(&other)
	if len(other.Neighbors) != 1 || other.Neighbors[0].Key != (key.Public{9}) {
		t.Fatal("a record with another signature took the shared lists")
	}
}
