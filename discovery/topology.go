package discovery

import (
	"container/heap"
	"encoding/binary"
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

// adjacency maps each peer to its confirmed neighbors, sorted by key.
type adjacency map[key.Public][]key.Public

// buildAdjacency derives the confirmed edges from records.
func buildAdjacency(recs map[key.Public]*Record) adjacency {
	claims := func(a, b key.Public) bool {
		ra := recs[a]
		if ra == nil {
			return false
		}
		for _, n := range ra.Neighbors {
			if n.Key == b && n.Established {
				return true
			}
		}
		return false
	}
	adj := make(adjacency, len(recs))
	for a, ra := range recs {
		for _, n := range ra.Neighbors {
			b := n.Key
			if b == a || !n.Established || !claims(b, a) {
				continue
			}
			if !slices.Contains(adj[a], b) {
				adj[a] = append(adj[a], b)
			}
		}
	}
	for a := range adj {
		slices.SortFunc(adj[a], cmpKey)
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

// routes is the result of one shortest-path computation from self.
type routes struct {
	self    key.Public
	hops    map[key.Public]int        // reachable peers (self at 0)
	prev    map[key.Public]key.Public // predecessor on the best path from self
	nextHop map[key.Public]key.Public // first hop from self; absent for self
}

// computeRoutes runs Dijkstra over (hops, tie-break sum) from self.
func computeRoutes(self key.Public, adj adjacency) routes {
	rt := routes{
		self:    self,
		hops:    map[key.Public]int{self: 0},
		prev:    map[key.Public]key.Public{},
		nextHop: map[key.Public]key.Public{},
	}
	type best struct {
		hops int
		tie  uint64
		prev key.Public
	}
	dist := map[key.Public]best{self: {}}
	done := map[key.Public]bool{}
	pq := &pathHeap{{k: self}}
	for pq.Len() > 0 {
		it := heap.Pop(pq).(pathItem)
		if done[it.k] {
			continue
		}
		done[it.k] = true
		if it.k != self {
			p := dist[it.k].prev
			rt.hops[it.k] = it.hops
			rt.prev[it.k] = p
			if p == self {
				rt.nextHop[it.k] = it.k
			} else {
				rt.nextHop[it.k] = rt.nextHop[p]
			}
		}
		for _, n := range adj[it.k] {
			if done[n] {
				continue
			}
			cand := best{hops: it.hops + 1, tie: it.tie + edgeWeight(it.k, n), prev: it.k}
			old, seen := dist[n]
			if seen && !better(cand.hops, cand.tie, cand.prev, old.hops, old.tie, old.prev) {
				continue
			}
			dist[n] = cand
			heap.Push(pq, pathItem{k: n, hops: cand.hops, tie: cand.tie})
		}
	}
	return rt
}

func better(h1 int, t1 uint64, p1 key.Public, h2 int, t2 uint64, p2 key.Public) bool {
	if h1 != h2 {
		return h1 < h2
	}
	if t1 != t2 {
		return t1 < t2
	}
	return p1.Less(p2)
}

// path returns the best path from self to dst, both included, or nil when
// dst is unreachable.
func (rt routes) path(dst key.Public) []key.Public {
	if _, ok := rt.hops[dst]; !ok {
		return nil
	}
	var p []key.Public
	for k := dst; ; k = rt.prev[k] {
		p = append(p, k)
		if k == rt.self {
			break
		}
	}
	slices.Reverse(p)
	return p
}

type pathItem struct {
	k    key.Public
	hops int
	tie  uint64
}

type pathHeap []pathItem

func (h pathHeap) Len() int { return len(h) }
func (h pathHeap) Less(i, j int) bool {
	if h[i].hops != h[j].hops {
		return h[i].hops < h[j].hops
	}
	if h[i].tie != h[j].tie {
		return h[i].tie < h[j].tie
	}
	return h[i].k.Less(h[j].k)
}
func (h pathHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pathHeap) Push(x any)   { *h = append(*h, x.(pathItem)) }
func (h *pathHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
