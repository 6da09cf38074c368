package discovery

import (
	"encoding/binary"

	"github.com/weavewg/weavewg/types/key"
)

// Reachability changes, logged for the loops that follow membership (the
// daemon's reconcile, the simulator's node loop). Such a loop ran on every
// nudge of Changes and read every reachable peer (Reachable) to find the
// few that arrived or left: O(N) per router per change, so O(N²) for the
// mesh, though a join makes one peer reachable. The router notes each
// peer whose reachability or direct connection changed as it changes
// (routes are refreshed peer by peer: reroute.go), and a reader asks for
// what changed since its last read.

// ReachChange is one peer's state after a change of its reachability or
// of our control connection to it.
type ReachChange struct {
	Key       key.Public
	Reachable bool
	Direct    bool // we have an established control connection to it
}

// maxReachLog bounds the log: a reader further behind than that gets the
// whole set again (a heal, a restart: O(N) then anyway). The log is kept
// whole up to the bound, read or not (24 KB a router at 512; at 4,096 it
// was up to 200 KB, 200 MB for a thousand simulated routers).
const maxReachLog = 512

// reachLog is the log of changes; guarded by Router.mu. A mark is the
// position after the last change a reader has seen; the first change
// ever logged is at position 1, so a reader's zero mark is never current.
type reachLog struct {
	base uint64 // the position of log[0]
	log  []ReachChange
}

// noteReachLocked logs k's state now (after a flip of its reachability or
// of r.active[k]).
func (r *Router) noteReachLocked(k key.Public) {
	r.viewGen++
	if k == r.self {
		return
	}
	r.dialChangedLocked() // a connection made or lost, a route flipped
	l := &r.reachLog
	if l.base == 0 {
		l.base = 1
	}
	if len(l.log) >= maxReachLog {
		n := len(l.log) / 2
		l.log = append(l.log[:0], l.log[n:]...)
		l.base += uint64(n)
	}
	l.log = append(l.log, ReachChange{Key: k, Reachable: r.rt.reachable(k), Direct: r.active[k] != nil})
}

// ReachChanges returns what changed since mark (a next an earlier call
// returned), in order: applied one after another, each peer's last change
// is its state now. When mark is 0 or no longer in the log (the reader
// fell more than 512 changes behind), full is true and changes is
// every reachable peer but self instead (as Reachable), to replace the
// reader's view. next is the mark to pass next time.
func (r *Router) ReachChanges(mark uint64) (changes []ReachChange, next uint64, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	l := &r.reachLog
	if l.base == 0 {
		l.base = 1
	}
	end := l.base + uint64(len(l.log))
	if mark >= l.base && mark <= end {
		return append([]ReachChange(nil), l.log[mark-l.base:]...), end, false
	}
	changes = make([]ReachChange, 0, r.rt.count())
	for k := range r.rt.others() {
		changes = append(changes, ReachChange{Key: k, Reachable: true, Direct: r.active[k] != nil})
	}
	return changes, end, true
}

// viewFingerprint is Fingerprint's answer, kept until the view changes.
type viewFingerprint struct {
	valid bool
	gen   uint64 // the viewGen it was computed at
	sum   uint64
	count int
}

// Fingerprint returns an order-free hash of the reachable peers (self
// included) and the version of each one's record, and how many they are:
// two routers that reach the same peers at the same versions return the
// same. It is computed again only after the records or the routes
// changed, so a loop that compares many routers' views (the simulator's
// Cluster.Check, every 100 ms of a wait) costs O(1) per router that did
// not change, where reading each one's Reachable made every call O(N²)
// at N routers (2.8 % of the N=1,000 simulation's CPU).
func (r *Router) Fingerprint() (sum uint64, count int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	f := &r.fingerprint
	if f.valid && f.gen == r.viewGen {
		return f.sum, f.count
	}
	f.sum, f.count = 0, 0
	for k := range r.rt.all() {
		var v uint64
		if e := r.recs[k]; e != nil {
			v = e.rec.Version
		}
		f.sum += reachFingerprint(k, v)
		f.count++
	}
	f.valid, f.gen = true, r.viewGen
	return f.sum, f.count
}

// reachFingerprint is one peer's record version as a term of
// Fingerprint's order-free sum (a 64-bit mix: two views that differ
// collide with odds of about 2^-64).
func reachFingerprint(k key.Public, v uint64) uint64 {
	x := binary.BigEndian.Uint64(k[:8]) ^ binary.BigEndian.Uint64(k[8:16])*0x9e3779b97f4a7c15 ^ v*0xbf58476d1ce4e5b9
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}
