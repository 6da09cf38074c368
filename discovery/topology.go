package discovery

import (
	"encoding/binary"
	"iter"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Topology and routes. Everything here is pure: no locks, no clock, no I/O.
//
// An edge A–B exists only when A's record lists B as an established neighbor
// and B's record lists A. A peer is reachable when a path of such edges leads
// to it from self.
//
// Routes are shortest paths in hops. Among paths of equal length the one with
// the smallest sum of per-edge tie-break weights wins. The weight of an edge
// is a hash of its two keys taken in sorted order, so it does not depend on
// direction. With such weights the best path is (almost surely) unique, so the
// path C→A that C computes is the reverse of the path A→C that A computes, and
// every sub-path of a best path is itself best: a relay on the way from A to C
// forwards along the same path A chose. Weights are 48-bit, so sums cannot
// overflow for any path shorter than 65536 hops. Should two paths tie exactly
// (probability about 2^-48 per pair), the smaller predecessor key wins, which
// is deterministic but not guaranteed symmetric.
//
// Cost: a flood changes a few records at a time and every router
// recomputes (in simulation, a thousand routers in one process). The graph
// is therefore kept between computations (topoGraph): each record's
// established neighbours are turned into dense indexes with the edge
// weights once per record version, a version whose neighbour keys did not
// change leaves the routes alone, and a computation is one breadth-first
// pass over arrays (every edge counts one hop, so the layers of a BFS are
// Dijkstra's order) with no map lookups and no hashing.

// topoGraph is the graph of claimed edges, by dense index, kept between
// recomputations.
type topoGraph struct {
	ids   map[key.Public]int32
	keys  []key.Public
	nodes []topoNode
	gen   uint32
	epoch uint32 // bumped each time the graph starts over
	// touched: edges whose existence may have changed since the routes
	// were last refreshed (reroute.go), as pairs of indexes.
	touched [][2]int32
	moved   []uint32 // scratch of refresh: the pass that moved each index
	pass    uint32
}

type topoNode struct {
	present bool   // has a record in the table
	mark    uint32 // gen of the update that last saw its record
	version uint64 // of the record claims were derived from
	claims  []claim
	// by: the nodes whose claims list this one, in no order (kept
	// through the node's own removal: others' records still claim it).
	// Whether a reachable peer vouches for a forgotten peer is then
	// O(its claimers), not a pass over every reachable peer.
	by []int32
}

// claim is one established neighbour a record lists, with the weight of
// the edge (which exists only if the neighbour claims back).
type claim struct {
	id int32
	w  uint64
}

func (g *topoGraph) id(k key.Public) int32 {
	if i, ok := g.ids[k]; ok {
		return i
	}
	if g.ids == nil {
		g.ids = map[key.Public]int32{}
	}
	i := int32(len(g.keys))
	g.ids[k] = i
	g.keys = append(g.keys, k)
	g.nodes = append(g.nodes, topoNode{})
	return i
}

// update brings the graph to recs (every record of the table): the full
// pass, for a graph started over and for tests; the router hands each
// changed record to set as it changes (table.go). It reports whether any
// edge (or the set of peers) changed, so routes must be recomputed, and
// whether any record's neighbour list changed at all (the addresses
// neighbours are seen at included).
func (g *topoGraph) update(recs iter.Seq2[key.Public, *Record], n int) (edges, neighbors bool) {
	if len(g.keys) > 2*n+1024 {
		// Keys of forgotten peers and of neighbours never seen pile
		// up; start over.
		*g = topoGraph{epoch: g.epoch + 1}
	}
	g.gen++
	for k, rec := range recs {
		e, nb := g.set(k, rec)
		edges, neighbors = edges || e, neighbors || nb
		g.nodes[g.ids[k]].mark = g.gen
	}
	for i := range g.nodes {
		nd := &g.nodes[i]
		if nd.present && nd.mark != g.gen {
			g.remove(g.keys[i])
			edges, neighbors = true, true
		}
	}
	return edges, neighbors
}

// set brings k's node to rec, O(its neighbours): it reports whether an
// edge or the set of peers changed and whether the neighbour list changed
// at all, and notes each edge whose existence may have changed (touched)
// for the next refresh of the routes.
func (g *topoGraph) set(k key.Public, rec *Record) (edges, neighbors bool) {
	i := g.id(k)
	nd := &g.nodes[i]
	if !nd.present {
		nd.present, edges = true, true
	}
	if nd.version == rec.Version && nd.claims != nil {
		return edges, false
	}
	if nd.version != rec.Version {
		neighbors = true
	}
	claims := make([]claim, 0, len(rec.Neighbors))
	for _, nb := range rec.Neighbors {
		if nb.Key == k || !nb.Established {
			continue
		}
		claims = append(claims, claim{id: g.id(nb.Key)})
	}
	nd = &g.nodes[i] // g.id may have moved the nodes
	nd.version = rec.Version
	slices.SortFunc(claims, func(a, b claim) int { return int(a.id) - int(b.id) })
	claims = slices.CompactFunc(claims, func(a, b claim) bool { return a.id == b.id })
	// A new version mostly lists the same neighbours: their edges keep
	// their weights, and only new ones are hashed.
	old := nd.claims
	for x, j := 0, 0; x < len(claims); x++ {
		for j < len(old) && old[j].id < claims[x].id {
			j++
		}
		if j < len(old) && old[j].id == claims[x].id {
			claims[x].w = old[j].w
		} else {
			claims[x].w = edgeWeight(k, g.keys[claims[x].id])
		}
	}
	if g.touchDiff(i, nd.claims, claims) {
		edges = true
	}
	nd.claims = claims
	return edges, neighbors
}

// remove forgets k's record: its claims, so every edge it had.
func (g *topoGraph) remove(k key.Public) {
	i, ok := g.ids[k]
	if !ok || !g.nodes[i].present {
		return
	}
	g.touchDiff(i, g.nodes[i].claims, nil)
	g.nodes[i] = topoNode{by: g.nodes[i].by}
}

// touchDiff notes, in g.touched, the edges of node i whose claim differs
// between old and new (both sorted by id) and which the other end
// claims back: the edges that appear or vanish. It reports whether there
// were any differences at all.
func (g *topoGraph) touchDiff(i int32, old, new []claim) bool {
	diff := false
	touch := func(j int32) {
		diff = true
		if g.claims(j, i) {
			g.touched = append(g.touched, [2]int32{i, j})
		}
	}
	a, b := 0, 0
	for a < len(old) || b < len(new) {
		switch {
		case b == len(new) || a < len(old) && old[a].id < new[b].id:
			touch(old[a].id)
			by := g.nodes[old[a].id].by
			if x := slices.Index(by, i); x >= 0 {
				by[x] = by[len(by)-1]
				g.nodes[old[a].id].by = by[:len(by)-1]
			}
			a++
		case a == len(old) || new[b].id < old[a].id:
			touch(new[b].id)
			g.nodes[new[b].id].by = append(g.nodes[new[b].id].by, i)
			b++
		default:
			a++
			b++
		}
	}
	return diff
}

// edge reports whether the edge a–b exists (both claim it) and its
// weight.
func (g *topoGraph) edge(a, b int32) (uint64, bool) {
	cs := g.nodes[a].claims
	i, ok := slices.BinarySearchFunc(cs, b, func(c claim, t int32) int { return int(c.id) - int(t) })
	if !ok || !g.claims(b, a) {
		return 0, false
	}
	return cs[i].w, true
}

// degree is the number of established neighbours k's record lists (0
// for a peer without a record).
func (g *topoGraph) degree(k key.Public) int {
	i, ok := g.ids[k]
	if !ok {
		return 0
	}
	return len(g.nodes[i].claims)
}

// linkedWithout reports whether a path of confirmed edges other than the
// edge a–b itself links a and b: whether dropping that edge keeps them
// (and so the mesh) connected. A breadth-first search from b that stops
// at a: a few hundred nodes in a random graph of degree 15 or more.
func (g *topoGraph) linkedWithout(a, b key.Public) bool {
	ia, ok := g.ids[a]
	if !ok {
		return false
	}
	ib, ok := g.ids[b]
	if !ok {
		return false
	}
	seen := map[int32]bool{ib: true}
	queue := []int32{ib}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		for _, c := range g.nodes[x].claims {
			y := c.id
			if seen[y] || x == ib && y == ia || !g.claims(y, x) {
				continue
			}
			if y == ia {
				return true
			}
			seen[y] = true
			queue = append(queue, y)
		}
	}
	return false
}

// claimedByReachable reports whether a peer other than rt's self that rt
// reaches lists k as an established neighbour.
func (g *topoGraph) claimedByReachable(k key.Public, rt *routes) bool {
	i, ok := g.ids[k]
	if !ok {
		return false
	}
	for _, j := range g.nodes[i].by {
		if c := g.keys[j]; c != rt.self && rt.reachable(c) {
			return true
		}
	}
	return false
}

// claims reports whether node a's record lists b as an established
// neighbour.
func (g *topoGraph) claims(a, b int32) bool {
	_, ok := slices.BinarySearchFunc(g.nodes[a].claims, b, func(c claim, t int32) int { return int(c.id) - int(t) })
	return ok
}

// adjacency returns the confirmed neighbours of every peer, sorted by key
// (tests).
func (g *topoGraph) adjacency() map[key.Public][]key.Public {
	adj := map[key.Public][]key.Public{}
	for a := range g.nodes {
		for _, c := range g.nodes[a].claims {
			if g.claims(c.id, int32(a)) {
				adj[g.keys[a]] = append(adj[g.keys[a]], g.keys[c.id])
			}
		}
	}
	for k := range adj {
		slices.SortFunc(adj[k], cmpKey)
	}
	return adj
}

func cmpKey(a, b key.Public) int {
	switch {
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	}
	return 0
}

// edgeWeight is the direction-independent tie-break weight of edge a–b.
func edgeWeight(a, b key.Public) uint64 {
	if b.Less(a) {
		a, b = b, a
	}
	var h uint64
	for _, k := range [2]key.Public{a, b} {
		for i := 0; i < key.Len; i += 8 {
			h = splitmix64(h ^ binary.BigEndian.Uint64(k[i:]))
		}
	}
	return h >> 16
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// routes is the result of a shortest-path computation from self, by the
// graph's dense indexes (a map per result cost more than the search at a
// thousand peers). ids and keys are the graph's: they only grow, and an
// index never changes meaning while the graph lives. A full computation
// (topoGraph.routes) fills every array; topoGraph.refresh then changes
// only what the graph's touched edges change (reroute.go).
type routes struct {
	self  key.Public
	ids   map[key.Public]int32
	keys  []key.Public
	order []int32  // the reachable peers, self first, in no further order
	hops  []int32  // by index; -1: unreachable (indexes past the end too)
	prev  []int32  // predecessor on the best path from self
	next  []int32  // first hop from self; -1 for self
	tie   []uint64 // sum of the tie-break weights along the best path
	pos   []int32  // where the index is in order; -1: unreachable
	// The tree of best paths: each index's first child and its siblings
	// (doubly linked), so a cut edge finds the peers routed through it
	// without a pass over every peer.
	kid, sib, sibPrev []int32
	// graph is the epoch of the graph the routes were computed from;
	// refresh only continues routes of the same graph.
	from  *topoGraph
	graph uint32
	full  bool // computed by topoGraph.routes (noRoutes is not)
}

// noRoutes is the routes of a peer that knows no other.
func noRoutes(self key.Public) routes {
	return routes{
		self:  self,
		ids:   map[key.Public]int32{self: 0},
		keys:  []key.Public{self},
		order: []int32{0},
		hops:  []int32{0},
		prev:  []int32{-1},
		next:  []int32{-1},
	}
}

// index is k's index if k is reachable.
func (rt *routes) index(k key.Public) (int32, bool) {
	i, ok := rt.ids[k]
	if !ok || int(i) >= len(rt.hops) || rt.hops[i] < 0 {
		return -1, false
	}
	return i, true
}

// reachable reports whether a path leads to k (self included).
func (rt *routes) reachable(k key.Public) bool {
	_, ok := rt.index(k)
	return ok
}

// hopCount is the length of the best path to k.
func (rt *routes) hopCount(k key.Public) (int, bool) {
	i, ok := rt.index(k)
	if !ok {
		return 0, false
	}
	return int(rt.hops[i]), true
}

// nextHop is the first hop towards k; false for self and unreachable k.
func (rt *routes) nextHop(k key.Public) (key.Public, bool) {
	i, ok := rt.index(k)
	if !ok || rt.next[i] < 0 {
		return key.Public{}, false
	}
	return rt.keys[rt.next[i]], true
}

// count is the number of reachable peers, self included.
func (rt *routes) count() int { return len(rt.order) }

// all yields every reachable peer, self first.
func (rt *routes) all() iter.Seq[key.Public] {
	return func(yield func(key.Public) bool) {
		for _, i := range rt.order {
			if !yield(rt.keys[i]) {
				return
			}
		}
	}
}

// others yields every reachable peer but self.
func (rt *routes) others() iter.Seq[key.Public] {
	return func(yield func(key.Public) bool) {
		for _, i := range rt.order[1:] {
			if !yield(rt.keys[i]) {
				return
			}
		}
	}
}

// routes computes the best paths from self over the confirmed edges:
// fewest hops, then the smallest sum of edge weights, then the smaller
// predecessor key. Every edge is one hop, so breadth-first layers settle
// peers in Dijkstra's order: when layer L+1 is reached from every peer of
// layer L, each peer's best predecessor is the minimum over them.
func (g *topoGraph) routes(self key.Public) routes {
	g.touched = g.touched[:0]
	s, ok := g.ids[self]
	if !ok {
		return noRoutes(self)
	}
	n := len(g.nodes)
	rt := routes{
		self:  self,
		ids:   g.ids,
		keys:  g.keys,
		order: []int32{s},
		from:  g,
		graph: g.epoch,
		full:  true,
	}
	rt.grow(n)
	hops, prev, tie := rt.hops, rt.prev, rt.tie
	hops[s], tie[s], prev[s] = 0, 0, -1
	for start, layer := 0, int32(0); start < len(rt.order); layer++ {
		end := len(rt.order)
		for _, u := range rt.order[start:end] {
			for _, c := range g.nodes[u].claims {
				v := c.id
				if h := hops[v]; h >= 0 && h <= layer || !g.claims(v, u) {
					continue
				}
				t := tie[u] + c.w
				switch {
				case hops[v] < 0:
					hops[v], tie[v], prev[v] = layer+1, t, u
					rt.order = append(rt.order, v)
				case t < tie[v] || t == tie[v] && g.keys[u].Less(g.keys[prev[v]]):
					tie[v], prev[v] = t, u
				}
			}
		}
		start = end
	}
	rt.next[s] = -1
	for p, v := range rt.order {
		rt.pos[v] = int32(p)
		if p == 0 {
			continue
		}
		rt.link(v, prev[v])
		if prev[v] == s {
			rt.next[v] = v
		} else {
			rt.next[v] = rt.next[prev[v]]
		}
	}
	return rt
}

// path returns the best path from self to dst, both included, or nil when
// dst is unreachable.
func (rt *routes) path(dst key.Public) []key.Public {
	i, ok := rt.index(dst)
	if !ok {
		return nil
	}
	var p []key.Public
	for ; i >= 0; i = rt.prev[i] {
		p = append(p, rt.keys[i])
	}
	slices.Reverse(p)
	return p
}
