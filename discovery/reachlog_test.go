package discovery

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// TestReachChangesMatchReachable follows a router's reachability the way
// the daemon's reconcile does, through ReachChanges, while records of a
// random mesh arrive (joins, edges made and lost, one-sided claims,
// leaves) and its own connections come and go, and checks the view it
// folds from the changes against Reachable, the whole set, after every
// step; a reader that reads only now and then, and one that fell out of
// the log, must end at the same view. The router's own set of
// unreachable peers (expiry and bridge dials read it) is checked against
// its routes too, and its Fingerprint and anti-entropy summary (kept
// between changes) against the reachable set's and the digest's.
func TestReachChangesMatchReachable(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			r, err := New(Config{Private: newKey(t), Secret: testSecret, Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			const n = 80
			m := newMeshView(n)
			m.ks[0] = r.self
			m.live[0] = true
			conns := map[int]*conn{}
			apply := func(i int) {
				rec := m.record(i)
				r.mu.Lock()
				r.mergeRecordsLocked(nil, []Record{*rec}, []sigCheck{sigGood})
				r.mu.Unlock()
			}
			// connectSelf makes or cuts our connection to j; j's record
			// claims us back (or not) when claim.
			connectSelf := func(j int, on, claim bool) {
				r.mu.Lock()
				if on {
					a, _ := net.Pipe()
					c := &conn{r: r, nc: a, peer: m.ks[j], done: make(chan struct{})}
					r.conns[c] = struct{}{}
					if err := r.addConnLocked(c); err != nil {
						t.Fatal(err)
					}
					conns[j] = c
				} else {
					r.removeConnLocked(conns[j], nil)
					delete(conns, j)
				}
				r.publishNeighborsLocked()
				r.mu.Unlock()
				if claim == on {
					if on {
						m.nb[j][0] = true
					} else {
						delete(m.nb[j], 0)
					}
					apply(j)
				}
			}
			type state struct{ reach, direct bool }
			fold := func(view map[key.Public]state, changes []ReachChange, full bool) map[key.Public]state {
				if full {
					view = map[key.Public]state{}
				}
				for _, c := range changes {
					if c.Key == r.self {
						t.Fatal("a change of self")
					}
					view[c.Key] = state{c.Reachable, c.Direct}
				}
				return view
			}
			truth := func() map[key.Public]state {
				out := map[key.Public]state{}
				for _, p := range r.Reachable() {
					if p.Key != r.self {
						out[p.Key] = state{true, p.Direct}
					}
				}
				return out
			}
			reachable := func(view map[key.Public]state) map[key.Public]state {
				out := map[key.Public]state{}
				for k, s := range view {
					if s.reach {
						out[k] = s
					}
				}
				return out
			}
			var every, lazy map[key.Public]state
			var markEvery, markLazy uint64
			for step := range 300 {
				var live []int
				for i, ok := range m.live {
					if ok {
						live = append(live, i)
					}
				}
				var what string
				switch op := rng.IntN(10); {
				case op < 2: // a join: a new peer with a few edges, one to us sometimes
					j := -1
					for i, ok := range m.live {
						if !ok && i > 0 {
							j = i
							break
						}
					}
					if j < 0 {
						continue
					}
					m.live[j] = true
					for range 1 + rng.IntN(3) {
						if o := live[rng.IntN(len(live))]; o != 0 {
							m.nb[j][o], m.nb[o][j] = true, true
							apply(o)
						}
					}
					apply(j)
					if rng.IntN(3) == 0 {
						connectSelf(j, true, true)
					}
					what = fmt.Sprintf("join of %d", j)
				case op < 4: // our connection made or lost, claimed back or not yet
					j := live[rng.IntN(len(live))]
					if j == 0 {
						continue
					}
					connectSelf(j, conns[j] == nil, rng.IntN(4) > 0)
					what = fmt.Sprintf("our connection to %d", j)
				case op < 8: // an edge or a one-sided claim between others
					a, b := live[rng.IntN(len(live))], live[rng.IntN(len(live))]
					if a == b || a == 0 || b == 0 {
						continue
					}
					on := !m.nb[a][b]
					if on {
						m.nb[a][b] = true
					} else {
						delete(m.nb[a], b)
					}
					apply(a)
					if op < 6 {
						if on {
							m.nb[b][a] = true
						} else {
							delete(m.nb[b], a)
						}
						apply(b)
					}
					what = fmt.Sprintf("edge %d-%d %v", a, b, on)
				default: // a leave: its neighbours drop it (its record stays, unreachable)
					j := live[rng.IntN(len(live))]
					if j == 0 {
						continue
					}
					m.live[j] = false
					if conns[j] != nil {
						connectSelf(j, false, false)
					}
					for o := range m.nb[j] {
						if o != 0 {
							delete(m.nb[o], j)
							apply(o)
						}
					}
					m.nb[j] = map[int]bool{}
					apply(j)
					what = fmt.Sprintf("leave of %d", j)
				}
				changes, next, full := r.ReachChanges(markEvery)
				if full != (markEvery == 0) {
					t.Fatalf("step %d (%s): full %v at mark %d", step, what, full, markEvery)
				}
				every, markEvery = fold(every, changes, full), next
				r.mu.Lock()
				for k := range r.recs {
					_, listed := r.unreach[k]
					if want := k != r.self && !r.rt.reachable(k); listed != want {
						r.mu.Unlock()
						t.Fatalf("step %d (%s): a peer in the unreachable set %v, unreachable %v", step, what, listed, want)
					}
				}
				if len(r.unreach) > len(r.recs) {
					r.mu.Unlock()
					t.Fatalf("step %d (%s): %d peers in the unreachable set, %d records", step, what, len(r.unreach), len(r.recs))
				}
				r.mu.Unlock()
				if got, want := reachable(every), truth(); !maps.Equal(got, want) {
					t.Fatalf("step %d (%s): the changes folded give %d reachable peers %v, Reachable %d %v", step, what, len(got), got, len(want), want)
				}
				// Fingerprint, kept between changes, is the one of the
				// reachable set and versions now.
				var sum uint64
				reach := r.Reachable()
				for _, p := range reach {
					sum += reachFingerprint(p.Key, p.Version)
				}
				if got, n := r.Fingerprint(); got != sum || n != len(reach) {
					t.Fatalf("step %d (%s): Fingerprint %x of %d peers, the reachable set's %x of %d", step, what, got, n, sum, len(reach))
				}
				checkSummary(t, r, fmt.Sprintf("step %d (%s)", step, what))
				if rng.IntN(20) == 0 {
					changes, next, full := r.ReachChanges(markLazy)
					lazy, markLazy = fold(lazy, changes, full), next
					if got, want := reachable(lazy), truth(); !maps.Equal(got, want) {
						t.Fatalf("step %d (%s): a reader of every 20th step: %d reachable, Reachable %d", step, what, len(got), len(want))
					}
				}
			}
			// Expiry forgets the unreachable peers: none is left in the set.
			r.mu.Lock()
			before := len(r.unreach)
			r.expireLocked(r.now().Add(r.tun.expireAfter + time.Second))
			r.mu.Unlock()
			checkSummary(t, r, "after expiry")
			r.mu.Lock()
			for k := range r.unreach {
				if r.recs[k] == nil {
					r.mu.Unlock()
					t.Fatalf("an expired peer is still in the unreachable set (%d there before expiry)", before)
				}
			}
			r.mu.Unlock()
			// A reader left behind by more than the log holds starts over.
			r.mu.Lock()
			for range maxReachLog + 1 {
				r.noteReachLocked(m.ks[1])
			}
			r.mu.Unlock()
			changes, _, full := r.ReachChanges(markEvery)
			if !full {
				t.Fatalf("a mark %d changes behind: not told to start over", maxReachLog+1)
			}
			if got, want := reachable(fold(nil, changes, full)), truth(); !maps.Equal(got, want) {
				t.Fatalf("starting over: %d reachable, Reachable %d", len(got), len(want))
			}
		})
	}
}
