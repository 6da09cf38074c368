package discovery

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// meshView is a test's table of records: each peer's established
// neighbours, as its record would list them.
type meshView struct {
	ks   []key.Public
	nb   []map[int]bool // by index into ks: whom it claims
	ver  []uint64
	live []bool
}

func newMeshView(n int) *meshView {
	m := &meshView{ks: testKeys(n), nb: make([]map[int]bool, n), ver: make([]uint64, n), live: make([]bool, n)}
	for i := range m.nb {
		m.nb[i] = map[int]bool{}
	}
	return m
}

func (m *meshView) record(i int) *Record {
	m.ver[i]++
	rec := &Record{Key: m.ks[i], Version: m.ver[i]}
	for j := range m.nb[i] {
		rec.Neighbors = append(rec.Neighbors, Neighbor{Key: m.ks[j], Established: true})
	}
	return rec
}

// connect makes or cuts i–j on both ends and hands g the two new records.
func (m *meshView) connect(g *topoGraph, i, j int, on bool) {
	if on {
		m.nb[i][j], m.nb[j][i] = true, true
	} else {
		delete(m.nb[i], j)
		delete(m.nb[j], i)
	}
	g.set(m.ks[i], m.record(i))
	g.set(m.ks[j], m.record(j))
}

// claimOnly changes i's own claim of j alone (a record that arrived before
// the other end's).
func (m *meshView) claimOnly(g *topoGraph, i, j int, on bool) {
	if on {
		m.nb[i][j] = true
	} else {
		delete(m.nb[i], j)
	}
	g.set(m.ks[i], m.record(i))
}

// leave forgets i's record and every claim of it.
func (m *meshView) leave(g *topoGraph, i int) {
	m.live[i] = false
	g.remove(m.ks[i])
	for j := range m.nb[i] {
		delete(m.nb[j], i)
		g.set(m.ks[j], m.record(j))
	}
	m.nb[i] = map[int]bool{}
}

// sameRoutes reports how inc (refreshed) differs from full (computed
// from scratch): the reachable set, hops, tie sums, predecessors and first
// hops of every peer, and the tree's child lists.
func sameRoutes(inc, full *routes) error {
	reach := func(rt *routes) []key.Public {
		var ks []key.Public
		for k := range rt.all() {
			ks = append(ks, k)
		}
		slices.SortFunc(ks, cmpKey)
		return ks
	}
	if a, b := reach(inc), reach(full); !slices.Equal(a, b) {
		return fmt.Errorf("reachable: %d peers, full computation %d", len(a), len(b))
	}
	for _, v := range full.order {
		k := full.keys[v]
		i := inc.ids[k]
		if inc.hops[i] != full.hops[v] || inc.tie[i] != full.tie[v] {
			return fmt.Errorf("peer %d: hops %d tie %x, full %d %x", k[0], inc.hops[i], inc.tie[i], full.hops[v], full.tie[v])
		}
		if full.prev[v] >= 0 && inc.keys[inc.prev[i]] != full.keys[full.prev[v]] {
			return fmt.Errorf("peer %d: predecessor %d, full %d", k[0], inc.keys[inc.prev[i]][0], full.keys[full.prev[v]][0])
		}
		a, aok := inc.nextHop(k)
		b, bok := full.nextHop(k)
		if a != b || aok != bok {
			return fmt.Errorf("peer %d: next hop %d, full %d", k[0], a[0], b[0])
		}
	}
	kids := 0
	for _, v := range inc.order {
		for c := inc.kid[v]; c >= 0; c = inc.sib[c] {
			if inc.prev[c] != v || inc.hops[c] < 0 {
				return fmt.Errorf("peer %d listed as a child of %d, its predecessor is %d", inc.keys[c][0], inc.keys[v][0], inc.prev[c])
			}
			kids++
		}
	}
	if kids != len(inc.order)-1 {
		return fmt.Errorf("the tree holds %d children for %d reachable peers", kids, len(inc.order))
	}
	return nil
}

// Routes refreshed after each change of a random sequence (joins with
// several edges, connections made and lost, one-sided claims, leaves,
// rejoins) are the routes a full computation finds, and the peers
// reported as flipped are exactly those whose reachability changed.
func TestRefreshMatchesFull(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			const n = 120
			m := newMeshView(n)
			g := &topoGraph{}
			self := 0
			m.live[self] = true
			g.set(m.ks[self], m.record(self))
			rt := g.routes(m.ks[self])
			liveSet := func() []int {
				var l []int
				for i, ok := range m.live {
					if ok {
						l = append(l, i)
					}
				}
				return l
			}
			for step := range 400 {
				before := map[key.Public]bool{}
				for k := range rt.all() {
					before[k] = true
				}
				live := liveSet()
				var what string
				switch op := rng.IntN(10); {
				case op < 3: // a join: a new peer with a few edges
					var dead []int
					for i, ok := range m.live {
						if !ok {
							dead = append(dead, i)
						}
					}
					if len(dead) == 0 {
						continue
					}
					j := dead[rng.IntN(len(dead))]
					m.live[j] = true
					for range 1 + rng.IntN(5) {
						m.connect(g, j, live[rng.IntN(len(live))], true)
					}
					what = fmt.Sprintf("join of %d", j)
				case op < 8: // a connection made or lost between live
					// peers (both records), or one end's record first
					a, b := live[rng.IntN(len(live))], live[rng.IntN(len(live))]
					if a == b {
						continue
					}
					on := !m.nb[a][b]
					change, how := m.connect, "edge"
					if op >= 6 {
						change, how = m.claimOnly, "claim"
					}
					change(g, a, b, on)
					what = fmt.Sprintf("%s %d-%d %v", how, a, b, on)
				default: // a leave (never self)
					j := live[rng.IntN(len(live))]
					if j == self {
						continue
					}
					m.leave(g, j)
					what = fmt.Sprintf("leave of %d", j)
				}
				for i, nd := range g.nodes {
					for _, c := range nd.claims {
						if c.w != edgeWeight(g.keys[i], g.keys[c.id]) {
							t.Fatalf("step %d (%s): edge %d-%d kept a weight not its own", step, what, g.keys[i][0], g.keys[c.id][0])
						}
					}
				}
				for i := range g.nodes {
					var want, got []int32
					for j := range g.nodes {
						if g.claims(int32(j), int32(i)) {
							want = append(want, int32(j))
						}
					}
					got = slices.Sorted(slices.Values(g.nodes[i].by))
					if !slices.Equal(got, want) {
						t.Fatalf("step %d (%s): %d is claimed by %v, its claimers list says %v", step, what, i, want, got)
					}
				}
				flipped, _ := g.refresh(&rt)
				full := g.routes(m.ks[self])
				if err := sameRoutes(&rt, &full); err != nil {
					t.Fatalf("step %d (%s): %v", step, what, err)
				}
				want := map[key.Public]bool{}
				for k := range full.all() {
					if !before[k] {
						want[k] = true
					}
				}
				for k := range before {
					if !full.reachable(k) {
						want[k] = true
					}
				}
				got := map[key.Public]bool{}
				for _, k := range flipped {
					if got[k] {
						t.Fatalf("step %d (%s): peer %d reported flipped twice", step, what, k[0])
					}
					got[k] = true
				}
				if len(got) != len(want) {
					t.Fatalf("step %d (%s): %d peers reported flipped, %d did", step, what, len(got), len(want))
				}
				for k := range want {
					if !got[k] {
						t.Fatalf("step %d (%s): peer %d flipped unreported", step, what, k[0])
					}
				}
			}
		})
	}
}

// BenchmarkJoinRoutes is one router's route work for one join (a new peer
// with connWant edges, so its record and those of the peers it connects
// to change) and the leave that undoes it, in a random mesh of N peers of
// that degree: refreshed (reroute.go), and computed in full as every
// change was before. The refreshed figure stays flat as N grows; the full
// one grows with N.
func BenchmarkJoinRoutes(b *testing.B) {
	const degree = 15
	for _, n := range []int{100, 300, 1000, 3000} {
		m := newMeshView(n + 1)
		g := &topoGraph{}
		rng := rand.New(rand.NewPCG(uint64(n), 1))
		for i := range n {
			m.live[i] = true
			for len(m.nb[i]) < degree {
				if j := rng.IntN(n); j != i {
					m.nb[i][j], m.nb[j][i] = true, true
				}
			}
		}
		for i := range n {
			g.set(m.ks[i], m.record(i))
		}
		// The records the join and the leave bring, made once: the
		// benchmark times the graph and the routes, not the test's
		// record building.
		joiner := n
		peers := rng.Perm(n)[:degree]
		var joined, left []*Record
		m.live[joiner] = true
		for _, p := range peers {
			m.nb[joiner][p], m.nb[p][joiner] = true, true
		}
		joined = append(joined, m.record(joiner))
		for _, p := range peers {
			joined = append(joined, m.record(p))
		}
		for _, p := range peers {
			delete(m.nb[p], joiner)
			left = append(left, m.record(p))
		}
		apply := func(recs []*Record) {
			for _, rec := range recs {
				g.set(rec.Key, rec)
			}
		}
		join := func() { apply(joined) }
		leave := func() {
			g.remove(m.ks[joiner])
			apply(left)
		}
		for _, mode := range []string{"refresh", "full"} {
			b.Run(fmt.Sprintf("N=%d/%s", n, mode), func(b *testing.B) {
				rt := g.routes(m.ks[0])
				for b.Loop() {
					join()
					if mode == "refresh" {
						g.refresh(&rt)
					} else {
						rt = g.routes(m.ks[0])
					}
					leave()
					if mode == "refresh" {
						g.refresh(&rt)
					} else {
						rt = g.routes(m.ks[0])
					}
				}
			})
		}
	}
}

// A simulation's longer timeouts reach the router; unset, the daemon's
// stay; negative ones are refused.
func TestConfigTimeouts(t *testing.T) {
	r, err := New(Config{Private: newKey(t), Port: 1, HandshakeTimeout: 50 * time.Second, ReadTimeout: 950 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.tun.handshake != 50*time.Second || r.tun.readTimeout != 950*time.Second {
		t.Errorf("handshake %v, read %v; want the configured 50s and 950s", r.tun.handshake, r.tun.readTimeout)
	}
	r, err = New(Config{Private: newKey(t), Port: 1})
	if err != nil {
		t.Fatal(err)
	}
	if d := defaultTunables(); r.tun.handshake != d.handshake || r.tun.readTimeout != d.readTimeout {
		t.Errorf("unset: handshake %v, read %v; want the defaults %v and %v", r.tun.handshake, r.tun.readTimeout, d.handshake, d.readTimeout)
	}
	if _, err := New(Config{Private: newKey(t), Port: 1, ReadTimeout: -time.Second}); err == nil {
		t.Error("a negative read timeout was taken")
	}
}
