package discovery

import (
	"maps"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// A tombstone refuses an expired peer's remembered versions, so a dead
// peer does not come back from peers that still hold its record; but not
// while a peer we reach lists it as an established neighbour: it is alive
// and connected, and only our view was late (at N=300 simulated, a joiner
// forgotten during a slow build stayed unreachable for one router until
// the build gave up).
func TestTombstoneYieldsToLiveNeighbour(t *testing.T) {
	r, err := New(Config{Private: newKey(t), Port: 1})
	if err != nil {
		t.Fatal(err)
	}
	y, x := seqKey(20), seqKey(40)
	setView := func(yClaimsX bool) {
		nb := []Neighbor{{Key: r.self, Established: true}}
		if yClaimsX {
			nb = append(nb, Neighbor{Key: x, Established: true})
		}
		recs := map[key.Public]*Record{
			r.self: {Key: r.self, Version: 1, Neighbors: []Neighbor{{Key: y, Established: true}}},
			y:      {Key: y, Version: 2, Neighbors: nb},
		}
		r.graph = topoGraph{}
		r.graph.update(maps.All(recs), len(recs))
		r.rt = r.graph.routes(r.self)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tombs[x] = tomb{version: 7, at: time.Now()}

	setView(false)
	if !r.rt.reachable(y) {
		t.Fatal("test setup: y not reachable")
	}
	if r.lacksLocked(x, 7) {
		t.Error("the tombstoned version of a peer nobody lists is wanted again")
	}
	if !r.lacksLocked(x, 8) {
		t.Error("a version past the tombstone is refused")
	}
	setView(true)
	if !r.lacksLocked(x, 7) {
		t.Error("the tombstoned version is refused although a reachable peer lists its owner as a neighbour")
	}
	rec := Record{Key: x, Version: 7}
	r.mergeRecordsLocked(nil, []Record{rec}, []sigCheck{sigGood})
	if e := r.recs[x]; e == nil || e.rec.Version != 7 {
		t.Error("the record of a live neighbour's neighbour was not taken over its tombstone")
	}
}
