package discovery

import (
	"container/heap"

	"github.com/weavewg/weavewg/types/key"
)

// Refreshing routes after a change, without a search over every peer.
//
// A change of one peer (a join, a leave, a connection made or lost) reaches
// every router as a few new record versions, each touching a few edges. A
// full computation per change costs each router O(peers · degree), so the
// mesh as a whole O(N²) per change: 4.4 s of CPU per join at 300 simulated
// peers. refresh changes only what the touched edges change (dynamic
// shortest paths, as Ramalingam and Reps): an edge that vanished moves the
// peers routed through it (its subtree in the tree of best paths, found
// through the tree's child lists), an edge that appeared moves the peers it
// brings nearer, and both are settled in one Dijkstra pass seeded from
// their unchanged neighbours. A joiner's edges move the joiner and the few
// peers it brings nearer; the work is O(moved · degree · log), whatever the
// size of the mesh. The result is the one topoGraph.routes computes, tie
// breaks included (TestRefreshMatchesFull).

// grow makes rt's arrays cover n indexes, new ones unreachable.
func (rt *routes) grow(n int) {
	for len(rt.hops) < n {
		rt.hops = append(rt.hops, -1)
		rt.prev = append(rt.prev, -1)
		rt.next = append(rt.next, -1)
		rt.tie = append(rt.tie, 0)
		rt.pos = append(rt.pos, -1)
		rt.kid = append(rt.kid, -1)
		rt.sib = append(rt.sib, -1)
		rt.sibPrev = append(rt.sibPrev, -1)
	}
}

// link makes v a child of p in the tree of best paths.
func (rt *routes) link(v, p int32) {
	rt.sibPrev[v] = -1
	rt.sib[v] = rt.kid[p]
	if k := rt.kid[p]; k >= 0 {
		rt.sibPrev[k] = v
	}
	rt.kid[p] = v
}

// unlink takes v out of its parent's (prev[v]'s) children.
func (rt *routes) unlink(v int32) {
	p := rt.prev[v]
	if p < 0 {
		return
	}
	if sp := rt.sibPrev[v]; sp >= 0 {
		rt.sib[sp] = rt.sib[v]
	} else {
		rt.kid[p] = rt.sib[v]
	}
	if s := rt.sib[v]; s >= 0 {
		rt.sibPrev[s] = rt.sibPrev[v]
	}
	rt.sib[v], rt.sibPrev[v] = -1, -1
}

// addOrder and dropOrder keep order (the reachable set) by swapping.
func (rt *routes) addOrder(v int32) {
	rt.pos[v] = int32(len(rt.order))
	rt.order = append(rt.order, v)
}

func (rt *routes) dropOrder(v int32) {
	p := rt.pos[v]
	last := rt.order[len(rt.order)-1]
	rt.order[p] = last
	rt.pos[last] = p
	rt.order = rt.order[:len(rt.order)-1]
	rt.pos[v] = -1
}

// candidate is a path to v through via: its hops and tie-break sum.
type candidate struct {
	hops int32
	tie  uint64
	via  int32
	v    int32
}

// better reports whether c beats v's current label (fewest hops, then the
// smallest tie sum, then the smaller predecessor key: routes' order).
func (rt *routes) better(c candidate) bool {
	h := rt.hops[c.v]
	switch {
	case h < 0 || c.hops < h:
		return true
	case c.hops > h:
		return false
	case c.tie != rt.tie[c.v]:
		return c.tie < rt.tie[c.v]
	}
	return rt.keys[c.via].Less(rt.keys[rt.prev[c.v]])
}

// candidates is a min-heap in routes' order.
type candidates struct {
	c    []candidate
	keys []key.Public
}

func (h *candidates) Len() int { return len(h.c) }
func (h *candidates) Less(i, j int) bool {
	a, b := h.c[i], h.c[j]
	if a.hops != b.hops {
		return a.hops < b.hops
	}
	if a.tie != b.tie {
		return a.tie < b.tie
	}
	return h.keys[a.via].Less(h.keys[b.via])
}
func (h *candidates) Swap(i, j int) { h.c[i], h.c[j] = h.c[j], h.c[i] }
func (h *candidates) Push(x any)    { h.c = append(h.c, x.(candidate)) }
func (h *candidates) Pop() any {
	x := h.c[len(h.c)-1]
	h.c = h.c[:len(h.c)-1]
	return x
}

// refresh brings rt, computed from g earlier, to g's edges now, and
// returns the peers whose reachability changed and whether any edge had
// changed at all. Routes of another graph (or of one that started over
// since) are computed again in full.
func (g *topoGraph) refresh(rt *routes) (flipped []key.Public, computed bool) {
	if !rt.full || rt.from != g || rt.graph != g.epoch {
		old := *rt
		*rt = g.routes(rt.self)
		for _, v := range old.order {
			if k := old.keys[v]; !rt.reachable(k) {
				flipped = append(flipped, k)
			}
		}
		for _, v := range rt.order {
			if k := rt.keys[v]; !old.reachable(k) {
				flipped = append(flipped, k)
			}
		}
		return flipped, true
	}
	touched := g.touched
	g.touched = g.touched[:0]
	if len(touched) == 0 {
		return nil, false
	}
	rt.ids, rt.keys = g.ids, g.keys
	rt.grow(len(g.nodes))
	s := rt.ids[rt.self]
	for len(g.moved) < len(g.nodes) {
		g.moved = append(g.moved, 0)
	}
	g.pass++
	moved := func(v int32) bool { return g.moved[v] == g.pass }

	// Edges that vanished from the tree cut off their subtrees: every
	// peer in them is routed again.
	var cut []int32
	for _, e := range touched {
		a, b := e[0], e[1]
		if _, ok := g.edge(a, b); ok {
			continue
		}
		for _, v := range [2]int32{a, b} {
			p := a ^ b ^ v
			if rt.hops[v] > 0 && rt.prev[v] == p && !moved(v) {
				g.moved[v] = g.pass
				for stack := []int32{v}; len(stack) > 0; {
					u := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					cut = append(cut, u)
					for c := rt.kid[u]; c >= 0; c = rt.sib[c] {
						if !moved(c) {
							g.moved[c] = g.pass
							stack = append(stack, c)
						}
					}
				}
			}
		}
	}
	for _, v := range cut {
		rt.unlink(v)
	}
	for _, v := range cut {
		rt.hops[v], rt.prev[v] = -1, -1
	}
	pq := &candidates{keys: rt.keys}
	push := func(c candidate) {
		if c.v != s && rt.better(c) {
			heap.Push(pq, c)
		}
	}
	// Seeds: each cut-off peer from its neighbours outside the cut, each
	// new edge from whichever end is routed.
	for _, v := range cut {
		for _, c := range g.nodes[v].claims {
			u := c.id
			if moved(u) || rt.hops[u] < 0 || !g.claims(u, v) {
				continue
			}
			push(candidate{hops: rt.hops[u] + 1, tie: rt.tie[u] + c.w, via: u, v: v})
		}
	}
	for _, e := range touched {
		w, ok := g.edge(e[0], e[1])
		if !ok {
			continue
		}
		for _, uv := range [2][2]int32{{e[0], e[1]}, {e[1], e[0]}} {
			if u := uv[0]; rt.hops[u] >= 0 {
				push(candidate{hops: rt.hops[u] + 1, tie: rt.tie[u] + w, via: u, v: uv[1]})
			}
		}
	}
	// Dijkstra from the seeds: labels only improve, each peer settles
	// once.
	for pq.Len() > 0 {
		c := heap.Pop(pq).(candidate)
		v := c.v
		if !rt.better(c) {
			continue
		}
		if rt.hops[v] >= 0 {
			rt.unlink(v)
		} else if !moved(v) {
			rt.addOrder(v) // unreachable until now
			flipped = append(flipped, rt.keys[v])
		}
		rt.hops[v], rt.tie[v], rt.prev[v] = c.hops, c.tie, c.via
		rt.link(v, c.via)
		oldNext := rt.next[v]
		if c.via == s {
			rt.next[v] = v
		} else {
			rt.next[v] = rt.next[c.via]
		}
		if rt.next[v] != oldNext {
			// A predecessor of equal cost but smaller key changes the
			// first hop of the whole subtree without changing its
			// labels: pass it down.
			rt.passNext(v)
		}
		for _, cl := range g.nodes[v].claims {
			if g.claims(cl.id, v) {
				push(candidate{hops: c.hops + 1, tie: c.tie + cl.w, via: v, v: cl.id})
			}
		}
	}
	for _, v := range cut {
		if rt.hops[v] < 0 {
			rt.next[v] = -1
			rt.dropOrder(v)
			flipped = append(flipped, rt.keys[v])
		}
	}
	return flipped, true
}

// passNext gives v's subtree v's first hop.
func (rt *routes) passNext(v int32) {
	for stack := []int32{v}; len(stack) > 0; {
		u := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for c := rt.kid[u]; c >= 0; c = rt.sib[c] {
			rt.next[c] = rt.next[v]
			stack = append(stack, c)
		}
	}
}
