package ipam

import (
	"errors"
	"fmt"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// The rmpeer protocol (see the package doc for the safety argument). All of
// it is ring state, so it travels in the ordinary ring gossip:
//
//	issuer I:  Transfer{X, I} + Vote{I, X → I}
//	every peer P that sees transfers of X: Vote{P, X → smallest live issuer}
//	           (a vote is sticky: it moves only if its transfer is withdrawn)
//	I with a smaller live competitor:      Withdrawn (never completes after)
//	I when every elector votes for I:      Done (never withdraws after)
//
// The electors of X, as I sees them: every effective owner in its ring and
// every peer it can reach, plus I, minus X and minus any peer that is itself
// the subject of a transfer.

// Errors of RemovePeer.
var (
	ErrAlreadyRemoved     = errors.New("ipam: peer already handed over")
	ErrTransferInProgress = errors.New("ipam: peer is being handed over by another peer")
)

func (r *Ring) vote(voter, dead key.Public) (Vote, bool) {
	i, found := slices.BinarySearchFunc(r.Votes, Vote{Voter: voter, Dead: dead}, cmpVote)
	if !found {
		return Vote{}, false
	}
	return r.Votes[i], true
}

func (r *Ring) setVote(voter, dead, issuer key.Public) {
	v := Vote{Voter: voter, Dead: dead, Seq: 1, Issuer: issuer}
	i, found := slices.BinarySearchFunc(r.Votes, v, cmpVote)
	if !found {
		r.Votes = slices.Insert(r.Votes, i, v)
		return
	}
	if r.Votes[i].Issuer != issuer {
		r.Votes[i].Issuer = issuer
		r.Votes[i].Seq++
	}
}

func (r *Ring) transferIndex(dead, issuer key.Public) (int, bool) {
	return slices.BinarySearchFunc(r.Transfers, Transfer{Dead: dead, Issuer: issuer}, cmpTransfer)
}

// removed reports whether p's space has been handed over.
func (r *Ring) removed(p key.Public) bool {
	_, ok := r.doneTransfer(p)
	return ok
}

// withdrawn reports whether transfer t can no longer complete: its issuer
// withdrew it, or the issuer was itself handed over before completing it.
func (r *Ring) withdrawn(t Transfer) bool {
	return t.Withdrawn || (!t.Done && r.removed(t.Issuer))
}

// live returns the transfers of dead that may still complete, by issuer.
func (r *Ring) live(dead key.Public) []Transfer {
	var out []Transfer
	for _, t := range r.transfersOf(dead) {
		if !r.withdrawn(t) {
			out = append(out, t)
		}
	}
	return out
}

// RemovePeer records self's request to inherit dead's space (rmpeer). The
// space becomes self's only once StepTransfers completes the transfer.
func (r *Ring) RemovePeer(self, dead key.Public) error {
	if dead == self {
		return errors.New("ipam: a peer cannot remove itself")
	}
	if !r.Seeded() {
		return errors.New("ipam: ring not seeded yet")
	}
	if heir, ok := r.doneTransfer(dead); ok {
		return fmt.Errorf("%w: %s's space went to %s", ErrAlreadyRemoved, dead.Name(), heir.Name())
	}
	if i, found := r.transferIndex(dead, self); found {
		t := r.Transfers[i]
		if r.withdrawn(t) {
			if l := r.live(dead); len(l) > 0 {
				return fmt.Errorf("%w: %s (ours was withdrawn)", ErrTransferInProgress, l[0].Issuer.Name())
			}
			return fmt.Errorf("ipam: our transfer of %s was withdrawn", dead.Name())
		}
		return nil // already asked; idempotent
	}
	if v, ok := r.vote(self, dead); ok && v.Issuer != self {
		if i, found := r.transferIndex(dead, v.Issuer); found && !r.withdrawn(r.Transfers[i]) {
			return fmt.Errorf("%w: %s", ErrTransferInProgress, v.Issuer.Name())
		}
	}
	if len(r.Transfers) >= MaxTransfers {
		return ErrRingFull
	}
	i, _ := r.transferIndex(dead, self)
	r.Transfers = slices.Insert(r.Transfers, i, Transfer{Dead: dead, Issuer: self})
	r.setVote(self, dead, self)
	return nil
}

// electors returns the peers whose votes a transfer of dead needs.
func (r *Ring) electors(self, dead key.Public, reachable []key.Public) []key.Public {
	set := map[key.Public]bool{self: true}
	for _, e := range r.Entries {
		set[r.heir(e.Owner)] = true
	}
	for _, p := range reachable {
		set[p] = true
	}
	for _, t := range r.Transfers {
		delete(set, t.Dead)
	}
	delete(set, dead)
	out := make([]key.Public, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	return out
}

// StepTransfers does self's part of every pending rmpeer: vote, withdraw a
// transfer that lost to a smaller issuer, complete one that every elector
// voted for. reachable is the set of peers self can currently reach. It
// reports whether the ring changed.
func (r *Ring) StepTransfers(self key.Public, reachable []key.Public) bool {
	changed := false
	for i := 0; i < len(r.Transfers); {
		dead := r.Transfers[i].Dead
		n := len(r.transfersOf(dead))
		if r.stepDead(self, dead, reachable) {
			changed = true
		}
		i += n
	}
	return changed
}

func (r *Ring) stepDead(self, dead key.Public, reachable []key.Public) bool {
	if dead == self || r.removed(dead) {
		return false
	}
	live := r.live(dead)
	if len(live) == 0 {
		return false
	}
	best := live[0].Issuer
	changed := false
	v, ok := r.vote(self, dead)
	if !ok || !slices.ContainsFunc(live, func(t Transfer) bool { return t.Issuer == v.Issuer }) {
		r.setVote(self, dead, best)
		changed = true
	}
	k, mine := r.transferIndex(dead, self)
	if !mine || r.withdrawn(r.Transfers[k]) {
		return changed
	}
	if best != self {
		r.Transfers[k].Withdrawn = true
		return true
	}
	for _, p := range r.electors(self, dead, reachable) {
		if v, ok := r.vote(p, dead); !ok || v.Issuer != self {
			return changed
		}
	}
	r.Transfers[k].Done = true
	return true
}
