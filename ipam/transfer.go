package ipam

import (
	"bytes"
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
//	I when every elector votes for I:      Done + the certificate (never withdraws after)
//	every peer P:                          Accepted, when P concludes it (conclude)
//
// The electors of X, as I sees them: every effective owner in its ring and
// every peer it can reach, plus I, minus X and minus any peer that is itself
// the subject of a transfer.
//
// Issue 14: every vote is signed by its voter, every transfer state by its
// issuer, and Done carries the signed votes it counted (the certificate).
// No peer votes while it can reach X (so a member cannot have a live peer's
// space removed), and no peer takes a Done because it was told so: it
// accepts it only if it voted for that issuer itself (its current vote, or
// its signed vote in the certificate), or, when it is X, if the
// certificate holds the votes of every other owner it knows.

// Errors of RemovePeer.
var (
	ErrAlreadyRemoved     = errors.New("ipam: peer already handed over")
	ErrTransferInProgress = errors.New("ipam: peer is being handed over by another peer")
	// ErrTooManyElectors: the ring cannot carry the votes a transfer
	// needs (every owner's and every reachable peer's; see votesFit).
	ErrTooManyElectors = errors.New("ipam: rmpeer needs a vote of every owner and reachable peer, more than the ring can carry")
)

// votesFit reports whether the votes and certificate of a new transfer of
// dead by self fit the ring's bounds (MaxVotes, MaxCertVotes: votes and
// certificates are never pruned, and travel in one part of their own,
// parts.go). A transfer that did not fit was issued anyway, every peer
// voted until the vote table was full (ring_full) and the transfer never
// completed, and the table stayed full for the network's life, so no
// later rmpeer could complete either, whatever the mesh's size by then:
// past about 150 owners rmpeer broke the network's rmpeer for good. Now
// it is refused before anything is written (ErrTooManyElectors).
func (r *Ring) votesFit(self, dead key.Public, reachable []key.Public) (need int, ok bool) {
	electors := r.electors(self, dead, reachable)
	newVotes := 0
	for _, p := range electors {
		if _, found := r.vote(p, dead); !found {
			newVotes++
		}
	}
	return len(electors), len(r.Votes)+newVotes <= MaxVotes && r.certVotes()+len(electors) <= MaxCertVotes
}

func (r *Ring) vote(voter, dead key.Public) (Vote, bool) {
	i, found := slices.BinarySearchFunc(r.Votes, Vote{Voter: voter, Dead: dead}, cmpVote)
	if !found {
		return Vote{}, false
	}
	return r.Votes[i], true
}

// setVote records voter's vote (unsigned: the allocator signs its own
// items before sending, sign.go). It reports false when the ring has no room
// for another vote.
func (r *Ring) setVote(voter, dead, issuer key.Public) bool {
	v := Vote{Voter: voter, Dead: dead, Seq: 1, Issuer: issuer}
	i, found := slices.BinarySearchFunc(r.Votes, v, cmpVote)
	if !found {
		if len(r.Votes) >= MaxVotes {
			return false
		}
		r.Votes = slices.Insert(r.Votes, i, v)
		return true
	}
	if r.Votes[i].Issuer != issuer {
		r.Votes[i].Issuer = issuer
		r.Votes[i].Seq++
		r.Votes[i].Sig = key.Signature{}
	}
	return true
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
	if _, found := r.vote(self, dead); !found && len(r.Votes) >= MaxVotes {
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
	set[self] = true // the issuer's own vote is always in its certificate
	out := make([]key.Public, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	return out
}

// StepTransfers does self's part of every pending rmpeer: conclude what
// self can accept, vote, withdraw a transfer that lost to a smaller issuer,
// complete one that every elector voted for. reachable is the set of peers
// self can currently reach. It reports whether the ring changed.
func (r *Ring) StepTransfers(self key.Public, reachable []key.Public) bool {
	changed := r.conclude(self)
	for i := 0; i < len(r.Transfers); {
		dead := r.Transfers[i].Dead
		n := len(r.transfersOf(dead))
		if r.stepDead(self, dead, reachable) {
			changed = true
		}
		i += n
	}
	if r.conclude(self) {
		changed = true
	}
	return changed
}

func (r *Ring) stepDead(self, dead key.Public, reachable []key.Public) bool {
	if dead == self || r.removed(dead) || slices.Contains(reachable, dead) {
		return false // no vote, no completion while dead is alive to us
	}
	live := r.live(dead)
	if len(live) == 0 {
		return false
	}
	// A transfer its issuer already completed is the one to follow (a
	// late voter then concludes it, as the others did); otherwise the
	// smallest live issuer.
	best := live[0].Issuer
	for _, t := range live {
		if t.Done {
			best = t.Issuer
			break
		}
	}
	changed := false
	v, ok := r.vote(self, dead)
	if !ok || !slices.ContainsFunc(live, func(t Transfer) bool { return t.Issuer == v.Issuer }) {
		if r.setVote(self, dead, best) {
			changed = true
		}
	}
	k, mine := r.transferIndex(dead, self)
	if !mine || r.withdrawn(r.Transfers[k]) || r.Transfers[k].Done {
		return changed
	}
	if best != self {
		r.Transfers[k].Withdrawn = true
		r.Transfers[k].Sig = key.Signature{}
		return true
	}
	electors := r.electors(self, dead, reachable)
	slices.SortFunc(electors, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	cert := make([]CertVote, 0, len(electors))
	for _, p := range electors {
		v, ok := r.vote(p, dead)
		if !ok || v.Issuer != self {
			return changed
		}
		cert = append(cert, CertVote{Voter: p, Seq: v.Seq, Sig: v.Sig})
	}
	if r.certVotes()+len(cert) > MaxCertVotes {
		return changed // no room: the ring cannot carry the certificate
	}
	t := &r.Transfers[k]
	t.Done, t.Cert, t.Sig, t.Accepted = true, cert, key.Signature{}, true
	return true
}

// certVotes counts the votes in all certificates.
func (r *Ring) certVotes() int {
	n := 0
	for _, t := range r.Transfers {
		n += len(t.Cert)
	}
	return n
}

// conclude sets Accepted on every Done claim self can take (see the top of
// this file). It is monotone: more votes and claims only accept more.
func (r *Ring) conclude(self key.Public) bool {
	changed := false
	for i := range r.Transfers {
		t := &r.Transfers[i]
		if t.Done && !t.Accepted && r.acceptable(self, *t) {
			t.Accepted = true
			changed = true
		}
	}
	return changed
}

// acceptable reports whether self may conclude the Done claim t. The
// claim's signatures (issuer's and certificate's) were checked when it
// arrived (authority.go); this is the quorum rule.
func (r *Ring) acceptable(self key.Public, t Transfer) bool {
	inCert := func(p key.Public) bool {
		return slices.ContainsFunc(t.Cert, func(c CertVote) bool { return c.Voter == p })
	}
	switch self {
	case t.Issuer:
		return true
	case t.Dead:
		// Our own space: only if every other owner we know signed a vote
		// for this issuer (we were partitioned away and reclaimed), so a
		// member cannot take a live peer's space even in its own view.
		subjects := map[key.Public]bool{}
		for _, o := range r.Transfers {
			subjects[o.Dead] = true
		}
		for _, e := range r.Entries {
			o := r.heir(e.Owner)
			if o != self && !subjects[o] && !inCert(o) {
				return false
			}
		}
		return true
	}
	if v, ok := r.vote(self, t.Dead); ok && v.Issuer == t.Issuer {
		return true
	}
	return inCert(self)
}
