package discovery

import "github.com/weavewg/weavewg/types/key"

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
