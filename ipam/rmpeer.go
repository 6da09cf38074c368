package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// rmpeer, automatic reclaim and leaving: handing a peer's space to another.

// RemovePeer hands dead's space to this peer (rmpeer). It returns at once;
// the space is ours when every elector has voted for us (Status shows the
// transfer as pending until then). Running it on two peers at once is safe.
func (a *Allocator) RemovePeer(dead key.Public) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if _, ours := a.ring.transferIndex(dead, a.self); !ours && a.ring.Seeded() {
		if need, ok := a.ring.votesFit(a.self, dead, a.reachableList()); !ok {
			a.mu.Unlock()
			a.count("ipam_rmpeer_too_many_electors")
			return fmt.Errorf("%w: %d electors; the ring holds %d votes of pending rmpeers of at most %d and %d certificate votes of completed ones of at most %d (wait for the pending rmpeers to complete)",
				ErrTooManyElectors, need, len(a.ring.Votes), MaxVotes, a.ring.certVotes(), MaxCertVotes)
		}
	}
	if err := a.ring.RemovePeer(a.self, dead); err != nil {
		a.mu.Unlock()
		return err
	}
	a.ring.Used = true
	o, err := a.ringChangedLocked()
	a.mu.Unlock()
	a.flush(o)
	return err
}

// Reclaim runs RemovePeer for every unreachable owner whose goneSince time
// is at least after ago (--reclaim-after). The caller passes when it last
// saw each peer; peers missing from goneSince are left alone.
func (a *Allocator) Reclaim(goneSince map[key.Public]time.Time, after time.Duration) []key.Public {
	if after <= 0 {
		return nil
	}
	a.mu.Lock()
	now := a.now()
	var todo []key.Public
	for p := range a.ring.Owners() {
		t, ok := goneSince[p]
		if p == a.self || a.reachable[p] || !ok || now.Sub(t) < after {
			continue
		}
		if len(a.ring.transfersOf(p)) > 0 {
			continue // already being handled
		}
		todo = append(todo, p)
	}
	a.mu.Unlock()
	slices.SortFunc(todo, func(x, y key.Public) int { return bytes.Compare(x[:], y[:]) })
	var done []key.Public
	for _, p := range todo {
		err := a.RemovePeer(p)
		if err == nil {
			a.log.Warn("reclaiming the space of a peer gone too long", "peer", p.Name(), "gone_since", goneSince[p])
			done = append(done, p)
		} else if errors.Is(err, ErrTooManyElectors) {
			a.mu.Lock()
			if a.reclaimRefused != p {
				a.reclaimRefused = p
				a.log.Warn("cannot reclaim the space of a peer gone too long", "peer", p.Name(), "err", err)
			}
			a.mu.Unlock()
		}
	}
	return done
}

// ErrStillAllocated is returned by Leave while this peer has allocations.
var ErrStillAllocated = errors.New("ipam: addresses are still allocated here; release them first")

// Leave hands every range of this peer to one reachable peer (the smallest
// key, so the choice needs no agreement) and broadcasts the ring: how a
// peer that leaves the network for good gives its space back (weavewg
// reset). It returns the heir. If the broadcast is lost, the space stays
// with this peer's name until `rmpeer` on any member.
func (a *Allocator) Leave() (key.Public, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return key.Public{}, ErrClosed
	}
	if len(a.allocs) > 0 {
		a.mu.Unlock()
		return key.Public{}, ErrStillAllocated
	}
	var heir key.Public
	for p := range a.reachable {
		if heir.IsZero() || p.Less(heir) {
			heir = p
		}
	}
	if heir.IsZero() {
		a.mu.Unlock()
		return key.Public{}, errors.New("ipam: no reachable peer to hand the address space to")
	}
	_, spans := a.ownEntries()
	for _, s := range spans {
		if err := a.ring.Grant(a.self, heir, s); err != nil {
			a.mu.Unlock()
			return key.Public{}, fmt.Errorf("ipam: handing %v to %s: %w", s, heir.Name(), err)
		}
	}
	a.count("ipam_left")
	o, err := a.ringChangedLocked()
	a.mu.Unlock()
	a.flush(o)
	return heir, err
}
