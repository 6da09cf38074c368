package discovery

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// testKeys returns n distinct keys; key i's first byte is i so graphs read
// naturally, the rest is fixed noise so hashes are realistic.
func testKeys(n int) []key.Public {
	ks := make([]key.Public, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range ks {
		for j := range ks[i] {
			ks[i][j] = byte(rng.Uint32())
		}
		ks[i][0] = byte(i)
	}
	return ks
}

// graph returns the topology of the undirected edges given, as the records
// of both ends would claim them.
func graph(ks []key.Public, edges [][2]int) *topoGraph {
	recs := map[key.Public]*Record{}
	for _, k := range ks {
		recs[k] = &Record{Key: k, Version: 1}
	}
	for _, e := range edges {
		a, b := ks[e[0]], ks[e[1]]
		recs[a].Neighbors = append(recs[a].Neighbors, Neighbor{Key: b, Established: true})
		recs[b].Neighbors = append(recs[b].Neighbors, Neighbor{Key: a, Established: true})
	}
	g := &topoGraph{}
	g.update(maps.All(recs), len(recs))
	return g
}

// bfs returns hop distances from src.
func bfs(adj map[key.Public][]key.Public, src key.Public) map[key.Public]int {
	d := map[key.Public]int{src: 0}
	q := []key.Public{src}
	for len(q) > 0 {
		u := q[0]
		q = q[1:]
		for _, v := range adj[u] {
			if _, ok := d[v]; !ok {
				d[v] = d[u] + 1
				q = append(q, v)
			}
		}
	}
	return d
}

func TestRoutesSymmetric(t *testing.T) {
	ks := testKeys(16)
	ring := func(n int) (es [][2]int) {
		for i := range n {
			es = append(es, [2]int{i, (i + 1) % n})
		}
		return es
	}
	grid := func(w, h int) (es [][2]int) {
		for y := range h {
			for x := range w {
				if x+1 < w {
					es = append(es, [2]int{y*w + x, y*w + x + 1})
				}
				if y+1 < h {
					es = append(es, [2]int{y*w + x, (y+1)*w + x})
				}
			}
		}
		return es
	}
	complete := func(n int) (es [][2]int) {
		for i := range n {
			for j := i + 1; j < n; j++ {
				es = append(es, [2]int{i, j})
			}
		}
		return es
	}
	randomGraph := func(n int, p float64, seed uint64) (es [][2]int) {
		rng := rand.New(rand.NewPCG(seed, seed))
		for i := range n {
			for j := i + 1; j < n; j++ {
				if rng.Float64() < p {
					es = append(es, [2]int{i, j})
				}
			}
		}
		return es
	}
	tests := []struct {
		name  string
		n     int
		edges [][2]int
	}{
		{"line", 4, [][2]int{{0, 1}, {1, 2}, {2, 3}}},
		{"square", 4, ring(4)},
		{"ring6", 6, ring(6)},
		{"ring7", 7, ring(7)},
		{"grid3x3", 9, grid(3, 3)},
		{"grid4x4", 16, grid(4, 4)},
		{"complete5", 5, complete(5)},
		{"two squares", 6, [][2]int{{0, 1}, {0, 2}, {1, 3}, {2, 3}, {3, 4}, {3, 5}, {4, 5}}},
		{"diamond chain", 7, [][2]int{{0, 1}, {0, 2}, {1, 3}, {2, 3}, {3, 4}, {3, 5}, {4, 6}, {5, 6}}},
		{"disconnected", 5, [][2]int{{0, 1}, {2, 3}}},
		{"random1", 12, randomGraph(12, 0.3, 1)},
		{"random2", 16, randomGraph(16, 0.2, 2)},
		{"random3", 16, randomGraph(16, 0.5, 3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks := ks[:tt.n]
			g := graph(ks, tt.edges)
			rts := map[key.Public]*routes{}
			for _, k := range ks {
				rt := g.routes(k)
				rts[k] = &rt
			}
			for _, a := range ks {
				dist := bfs(g.adjacency(), a)
				for _, c := range ks {
					pac := rts[a].path(c)
					_, reach := dist[c]
					if !reach {
						if pac != nil {
							t.Errorf("%d→%d: path %v to an unreachable peer", a[0], c[0], names(pac))
						}
						if _, ok := rts[a].nextHop(c); ok {
							t.Errorf("%d→%d: next hop to an unreachable peer", a[0], c[0])
						}
						continue
					}
					if len(pac)-1 != dist[c] {
						t.Errorf("%d→%d: path %v is not shortest (%d hops)", a[0], c[0], names(pac), dist[c])
					}
					pca := slices.Clone(rts[c].path(a))
					slices.Reverse(pca)
					if !slices.Equal(pac, pca) {
						t.Errorf("%d→%d: %v, but %d→%d reversed: %v", a[0], c[0], names(pac), c[0], a[0], names(pca))
					}
					// Every relay on the way continues along the same path.
					for i := 1; i < len(pac)-1; i++ {
						if tail := rts[pac[i]].path(c); !slices.Equal(tail, pac[i:]) {
							t.Errorf("%d→%d via %d: relay's path %v, want %v", a[0], c[0], pac[i][0], names(tail), names(pac[i:]))
						}
					}
					if a != c {
						if hop, _ := rts[a].nextHop(c); hop != pac[1] {
							t.Errorf("%d→%d: next hop %d, path %v", a[0], c[0], hop[0], names(pac))
						}
					}
				}
			}
		})
	}
}

func names(p []key.Public) []string {
	out := make([]string, len(p))
	for i, k := range p {
		out[i] = fmt.Sprint(k[0])
	}
	return out
}

func TestEdgesNeedBothEnds(t *testing.T) {
	ks := testKeys(4)
	nb := func(ks ...key.Public) []Neighbor {
		var out []Neighbor
		for _, k := range ks {
			out = append(out, Neighbor{Key: k, Established: true})
		}
		return out
	}
	recs := map[key.Public]*Record{
		ks[0]: {Key: ks[0], Neighbors: nb(ks[1], ks[2])},
		ks[1]: {Key: ks[1], Neighbors: nb(ks[0])},
		ks[2]: {Key: ks[2]}, // does not confirm 0–2
		ks[3]: {Key: ks[3], Neighbors: append(nb(ks[0]), Neighbor{Key: ks[1]})},
	}
	recs[ks[1]].Neighbors = append(recs[ks[1]].Neighbors, Neighbor{Key: ks[3]}) // not established
	g := &topoGraph{}
	g.update(maps.All(recs), len(recs))
	adj := g.adjacency()
	if !slices.Equal(adj[ks[0]], []key.Public{ks[1]}) || !slices.Equal(adj[ks[1]], []key.Public{ks[0]}) {
		t.Errorf("adjacency: %v", adj)
	}
	if len(adj[ks[2]]) != 0 || len(adj[ks[3]]) != 0 {
		t.Errorf("one-sided or unestablished claims made edges: %v", adj)
	}
	rt := g.routes(ks[0])
	if rt.reachable(ks[2]) {
		t.Error("peer 2 reachable over a one-sided edge")
	}
}

func BenchmarkRoutes(b *testing.B) {
	ks := testKeys(200)
	rng := rand.New(rand.NewPCG(7, 7))
	var es [][2]int
	for i := range ks {
		for range 5 {
			es = append(es, [2]int{i, rng.IntN(len(ks))})
		}
	}
	g := graph(ks, es)
	for b.Loop() {
		g.routes(ks[0])
	}
}

func TestDuplicateTieBreakAgrees(t *testing.T) {
	ks := testKeys(2)
	a, b := ks[0], ks[1]
	// view returns conn as seen from self, for a connection dialled by
	// dialler with handshake hash h.
	view := func(self, dialler key.Public, h byte) *conn {
		peer := a
		if self == a {
			peer = b
		}
		return &conn{peer: peer, outbound: dialler == self, hash: []byte{h}}
	}
	tests := []struct {
		name          string
		d1, d2        key.Public
		h1, h2        byte
		wantFirstKept bool
	}{
		{"crossed, smaller key dialled first", a, b, 1, 2, true},
		{"crossed, smaller key dialled second", b, a, 1, 2, false},
		{"same dialler a, smaller hash first", a, a, 1, 2, true},
		{"same dialler a, smaller hash second", a, a, 2, 1, false},
		{"same dialler b", b, b, 3, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, self := range []key.Public{a, b} {
				c1, c2 := view(self, tt.d1, tt.h1), view(self, tt.d2, tt.h2)
				// Whichever arrived first, the same one is kept.
				if got := !c2.preferredOver(c1, self); got != tt.wantFirstKept {
					t.Errorf("self %d, c1 first: kept first = %v", self[0], got)
				}
				if got := c1.preferredOver(c2, self); got != tt.wantFirstKept {
					t.Errorf("self %d, c2 first: kept first = %v", self[0], got)
				}
			}
		})
	}
}
