package ipam

import (
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Space: which peers are reachable, asking a donor for space (the
// requester's side of a grant), and the periodic tick.

// SetPeers tells the allocator which peers are reachable now. The daemon
// calls it whenever the set changes.
func (a *Allocator) SetPeers(reachable []key.Public) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.reachable = make(map[key.Public]bool, len(reachable))
	for _, p := range reachable {
		if p != a.self {
			a.reachable[p] = true
		}
	}
	a.reachableChangedLocked()
}

// PeersChanged is SetPeers for a change of a few peers: up became
// reachable, down unreachable, every other peer is as it was. SetPeers
// takes the whole set, O(N) on every change of each of N peers (O(N²)
// for a mesh per join); a loop that follows reachability change by
// change (the daemon's reconcile, discovery.Router.ReachChanges) calls
// SetPeers once and this after.
func (a *Allocator) PeersChanged(up, down []key.Public) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	if a.reachable == nil {
		a.reachable = map[key.Public]bool{}
	}
	for _, p := range down {
		delete(a.reachable, p)
	}
	for _, p := range up {
		if p != a.self {
			a.reachable[p] = true
		}
	}
	a.reachableChangedLocked()
}

// reachableChangedLocked is the rest of SetPeers and PeersChanged, with
// a.reachable set: it steps transfers and asks another donor if ours is
// gone. It unlocks a.mu.
func (a *Allocator) reachableChangedLocked() {
	var reachable []key.Public
	if a.ring.needsReachable(a.self) {
		reachable = a.reachableList() // only pending transfers read it
	}
	var o outbox
	if a.ring.StepTransfers(a.self, reachable) {
		var err error
		if o, err = a.ringChangedLocked(); err != nil {
			a.log.Error("saving the ring", "err", err)
		}
	}
	if a.wantSpace && !a.reachable[a.reqDonor] {
		o.request(a.requestSpaceLocked(true))
	}
	a.mu.Unlock()
	a.flush(o)
}

// SetNeighbours tells the allocator which reachable peers it has a
// control connection to (the daemon's reconcile; each call replaces the
// set). A space request goes to one of them when one has free space: see
// pickDonorLocked.
func (a *Allocator) SetNeighbours(direct []key.Public) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(direct) == len(a.neighbours) {
		same := true
		for _, p := range direct {
			if !a.neighbours[p] {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	a.neighbours = make(map[key.Public]bool, len(direct))
	a.neighbourList = a.neighbourList[:0]
	for _, p := range direct {
		if p != a.self && !a.neighbours[p] {
			a.neighbours[p] = true
			a.neighbourList = append(a.neighbourList, p)
		}
	}
}

// requestSpaceLocked asks the best donor for space, unless a request is
// pending and not timed out (or force).
func (a *Allocator) requestSpaceLocked(force bool) outbox {
	a.wantSpace = true
	if !a.ring.Seeded() {
		return outbox{}
	}
	now := a.now()
	// Each donor that stays silent for this want doubles the wait for the
	// next (up to 8 times RequestTimeout): a donor busy with a batch of
	// joiners answers late, and asking another one too takes twice the
	// space and makes twice the changes.
	if !force && !a.reqDonor.IsZero() && now.Sub(a.reqAt) < a.reqTimeout<<min(len(a.silent), 3) {
		return outbox{}
	}
	if !force && !a.reqDonor.IsZero() && a.grantHeldLocked() && now.Sub(a.reqAt) < 5*a.reqTimeout {
		// A donor granted us space we could not place yet (we asked it
		// for the rest: authority.go): wait for that rather than take
		// space from another donor as well.
		return outbox{}
	}
	if !force && !a.reqDonor.IsZero() {
		if a.silent == nil {
			a.silent = map[key.Public]bool{}
		}
		a.silent[a.reqDonor] = true
	}
	donor, ok := a.pickDonorLocked()
	if !ok && len(a.silent) > 0 {
		// Every reachable donor was asked: start the round again.
		a.silent = nil
		donor, ok = a.pickDonorLocked()
	}
	if !ok {
		a.reqDonor = key.Public{}
		return outbox{}
	}
	a.reqDonor, a.reqAt = donor, now
	a.count("ipam_request_sent")
	// Our digest first: the donor answers what differs, then grants
	// (grant.go).
	d := a.digestLocked()
	return outbox{to: donor, pre: appendDigestMessage(nil, &d), send: AppendRequestMessage(nil, a.ring.Seed)}
}

// grantHeldLocked reports whether a held state (authority.go) gives us
// space.
func (a *Allocator) grantHeldLocked() bool {
	for _, h := range a.held {
		if h.e.Owner == a.self {
			return true
		}
	}
	return false
}

// pickDonorLocked picks the control neighbour with the most published
// free space, or if none has any, the reachable peer with the most (ties:
// smallest key); if none published any, the largest owner. Donors that
// stayed silent for the current want are passed over.
//
// Why a neighbour first: a joiner is reachable at its neighbours at once,
// but elsewhere only once its records have spread, and a relay with no
// route to it drops what it is sent after 3 s. A distant donor's grant was
// dropped that way, the joiner waited its timeout and asked the next,
// with the wait doubling (simulated N=300 at load 9-11: joiners without an
// address after 30-60 s, gossip_channel_no_route +92 for a batch of 10).
// A neighbour's answer takes the direct connection.
func (a *Allocator) pickDonorLocked() (key.Public, bool) {
	owners := a.ownersFreeLocked()
	if p, ok := a.pickDonorWhereLocked(owners, func(p key.Public, free uint64) bool { return a.neighbours[p] && free > 0 }); ok {
		return p, true
	}
	return a.pickDonorWhereLocked(owners, func(key.Public, uint64) bool { return true })
}

// ownerFree is an effective owner's total size and published free count.
type ownerFree struct{ size, free uint64 }

// ownersFreeLocked returns every effective owner's size and free count
// (Ring.Owners and Ring.FreeOf) in one pass over the ring, where a pass
// per owner was O(N²) per space request at N owners.
func (a *Allocator) ownersFreeLocked() map[key.Public]ownerFree {
	m := make(map[key.Public]ownerFree)
	for i := range a.ring.Entries {
		e := &a.ring.Entries[i]
		h := a.ring.heir(e.Owner)
		x := m[h]
		x.size += a.ring.entrySpan(i).Size()
		m[h] = x
		if e.Owner != h {
			continue // inherited: counts zero until the heir republishes it (FreeOf)
		}
		x = m[e.Owner]
		x.free += uint64(e.Free)
		m[e.Owner] = x
	}
	return m
}

// pickDonorWhereLocked is pickDonorLocked among the owners ok accepts.
func (a *Allocator) pickDonorWhereLocked(owners map[key.Public]ownerFree, ok func(p key.Public, free uint64) bool) (key.Public, bool) {
	var best key.Public
	var bestFree, bestSize uint64
	found := false
	for p, of := range owners {
		size, free := of.size, of.free
		if p == a.self || !a.reachable[p] || a.silent[p] || !ok(p, free) {
			continue
		}
		better := !found || free > bestFree || (free == bestFree && size > bestSize) ||
			(free == bestFree && size == bestSize && p.Less(best))
		if better {
			best, bestFree, bestSize, found = p, free, size, true
		}
	}
	return best, found
}

// mergedSaveInterval bounds how often Tick saves a ring that changed by
// merges alone (ringChangedLocked).
const mergedSaveInterval = 10 * time.Second

// Tick does the periodic work: publish free counts, step pending rmpeer
// transfers, ask the owners of refused states, send a quick digest round
// after a change (digest.go), retry a space request that timed out. Call
// it every second or so.
func (a *Allocator) Tick() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.ticked = a.now()
	var o outbox
	changed := false
	if a.freeStale {
		// Our free counts can have changed only with our allocations,
		// the reserved addresses or the ring (freeStale): an idle peer's
		// tick does nothing here.
		a.freeStale = false
		changed = a.publishFreeLocked(false)
	}
	if len(a.ring.Transfers) > 0 {
		var reachable []key.Public
		if a.ring.needsReachable(a.self) {
			reachable = a.reachableList() // (every reachable peer: only for pending transfers)
		}
		if a.ring.StepTransfers(a.self, reachable) {
			changed = true
		}
	}
	if changed {
		var err error
		if o, err = a.ringChangedLocked(); err != nil {
			a.log.Error("saving the ring", "err", err)
		}
	}
	if a.dirty && a.now().Sub(a.savedAt) >= mergedSaveInterval {
		if err := a.saveRingLocked(); err != nil {
			a.log.Error("saving the ring", "err", err)
		}
	}
	a.reAskLocked()
	a.askAuthoritiesLocked(&o)
	a.quickDigestLocked(&o)
	a.askRingAgainLocked(&o)
	if a.wantSpace {
		if _, ok := a.findFreeLocked(); ok {
			a.wantSpace, a.reqDonor, a.silent = false, key.Public{}, nil
		} else {
			o.request(a.requestSpaceLocked(false))
		}
	}
	a.mu.Unlock()
	a.flush(o)
}

// WantSpace asks a donor for a range now if this peer owns none, so that a
// peer that has just joined holds space before its first container comes.
// Until the ring arrives the request waits for it.
func (a *Allocator) WantSpace() {
	a.mu.Lock()
	if a.closed || len(a.ownSpans()) > 0 {
		a.mu.Unlock()
		return
	}
	o := a.requestSpaceLocked(false)
	a.mu.Unlock()
	a.flush(o)
}
