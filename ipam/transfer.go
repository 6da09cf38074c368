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
//	           (a vote is sticky: it moves only if its transfer is withdrawn,
//	           or to a Done claim)
//	I with a smaller live competitor:      Withdrawn (never completes after)
//	I when every elector votes for I:      Done + the certificate (never withdraws after)
//	every peer P:                          Accepted, when P concludes it (conclude)
//
// The electors of X, as I sees them: every effective owner in its ring and
// every peer it can reach, plus I, minus X and minus any peer that is itself
// the subject of a transfer; when that leaves no owner, also the issuer
// of every live transfer (see electors).
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
	// needs (every owner's and every reachable peer's) besides those of
	// the rmpeers pending, or its certificate besides those of the
	// completed ones (see votesFit).
	ErrTooManyElectors = errors.New("ipam: rmpeer needs a vote of every owner and reachable peer, more than the ring can carry now")
)

// votesFit reports whether the votes and certificate of a new transfer of
// dead by self fit the ring's bounds (MaxVotes for the votes of pending
// rmpeers, forgotten once concluded; MaxCertVotes for the certificates
// kept). A transfer that did not fit would be issued, every peer would
// vote until the vote table was full (ring_full) and it would never
// complete, blocking the others pending: it is refused before anything is
// written (ErrTooManyElectors).
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

// needsReachable reports whether StepTransfers would read the reachable
// peers: a transfer of a peer (not self) not concluded yet. Completed
// transfers are kept for the network's life, and listing every
// reachable peer for them on each change and Tick was O(N) for nothing.
func (r *Ring) needsReachable(self key.Public) bool {
	return slices.ContainsFunc(r.Transfers, func(t Transfer) bool { return t.Dead != self && !r.removed(t.Dead) })
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

// electors returns the peers whose votes a transfer of dead needs: every
// live owner (an effective owner that is neither dead nor the subject of
// a transfer), every reachable peer, self, and, when no live owner is
// left, the issuers of every live transfer (the package doc says why).
func (r *Ring) electors(self, dead key.Public, reachable []key.Public) []key.Public {
	set := map[key.Public]bool{self: true}
	subjects := map[key.Public]bool{dead: true}
	for _, t := range r.Transfers {
		subjects[t.Dead] = true
	}
	owners := map[key.Public]bool{}
	for _, e := range r.Entries {
		if o := r.heir(e.Owner); !subjects[o] {
			owners[o] = true
		}
	}
	for o := range owners {
		set[o] = true
	}
	for _, p := range reachable {
		set[p] = true
	}
	if len(owners) == 0 {
		for _, t := range r.Transfers {
			if !r.withdrawn(t) && !(t.Done && t.Accepted) {
				set[t.Issuer] = true
			}
		}
	}
	for p := range subjects {
		delete(set, p)
	}
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
	best, done := live[0].Issuer, false
	for _, t := range live {
		if t.Done {
			best, done = t.Issuer, true
			break
		}
	}
	changed := false
	v, ok := r.vote(self, dead)
	// A vote sticks to a live transfer, except that it moves to a Done
	// claim: the claim completed without it (so this voter was no elector
	// of it), moving takes no vote from a transfer that could still
	// complete with it, and the issuer the vote stuck to may have
	// concluded the claim and forgotten its own transfer (forget) without
	// ever withdrawing it, so waiting for a withdrawal could wait forever.
	if !ok || (done && v.Issuer != best) || !slices.ContainsFunc(live, func(t Transfer) bool { return t.Issuer == v.Issuer }) {
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
// this file), and forgets what a concluded transfer leaves useless. It is
// monotone: more votes and claims only accept more.
func (r *Ring) conclude(self key.Public) bool {
	changed := false
	var concluded []key.Public
	for i := range r.Transfers {
		t := &r.Transfers[i]
		if t.Done && !t.Accepted && r.acceptable(self, *t) {
			t.Accepted = true
			changed = true
		}
		if t.Accepted {
			concluded = append(concluded, t.Dead)
		}
	}
	for _, dead := range concluded {
		if r.forget(dead) {
			changed = true
		}
	}
	return changed
}

// forget drops the votes on dead and its transfers that are not Done, once
// this peer concluded a transfer of dead. They were only there to elect
// an issuer: the Done claim stays, with its certificate (the signed votes
// that a returning dead peer, or a voter whose vote moved, concludes
// from), and the receivers of votes or transfers of a peer they concluded
// drop them unread (forgotten, authority.go), so gossip never brings them
// back. So the vote table holds only pending rmpeers' votes: a completed
// rmpeer no longer fills it for the network's life (it did until Dec
// 2026, and past MaxVotes no later rmpeer could complete).
//
// Why this is safe: a voter's vote matters only until it concludes (its
// own acceptance reads it first); an issuer needs the votes only until it
// completes (then they are in its certificate); a peer that concluded
// never votes on dead again (stepDead skips a removed peer); and a
// pending transfer of dead by another issuer can no longer complete here
// or anywhere that holds the Done claim (it withdraws on seeing it).
func (r *Ring) forget(dead key.Public) bool {
	nv := len(r.Votes)
	r.Votes = slices.DeleteFunc(r.Votes, func(v Vote) bool { return v.Dead == dead })
	nt := len(r.Transfers)
	r.Transfers = slices.DeleteFunc(r.Transfers, func(t Transfer) bool { return t.Dead == dead && !t.Done })
	return len(r.Votes) != nv || len(r.Transfers) != nt
}

// forgotten reports whether a received vote or transfer state on dead is
// one this peer dropped for good (forget): dead's transfer is concluded
// here and the item is not a Done claim.
func (r *Ring) forgotten(dead key.Public, done bool) bool {
	return !done && r.removed(dead)
}

// unionCert returns the certificate votes of a and b, one per voter (the
// later vote where both hold one), sorted by voter, and whether b added
// to a. Certificates travel in slices (parts.go); each vote is its voter's
// signature alone, so the union proves no more than its votes do.
func unionCert(a, b []CertVote) ([]CertVote, bool) {
	if len(b) == 0 || slices.Equal(a, b) {
		return a, false
	}
	out := make([]CertVote, 0, len(a)+len(b))
	added := false
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch c := cmpCertVoter(a, b, i, j); {
		case c < 0:
			out = append(out, a[i])
			i++
		case c > 0:
			out = append(out, b[j])
			added = true
			j++
		default:
			x := a[i]
			if certVoteLess(x, b[j]) {
				x, added = b[j], true
			}
			out = append(out, x)
			i++
			j++
		}
	}
	return out, added
}

// cmpCertVoter compares a[i] and b[j] by voter, an exhausted side last.
func cmpCertVoter(a, b []CertVote, i, j int) int {
	switch {
	case j == len(b):
		return -1
	case i == len(a):
		return 1
	}
	return bytes.Compare(a[i].Voter[:], b[j].Voter[:])
}

// certVoteLess orders two certificate votes of one voter: the later
// vote, then (a misbehaving voter's two signatures) the larger signature.
func certVoteLess(a, b CertVote) bool {
	if a.Seq != b.Seq {
		return a.Seq < b.Seq
	}
	return bytes.Compare(a.Sig[:], b.Sig[:]) < 0
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
