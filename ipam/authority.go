package ipam

import (
	"fmt"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Who may change what (issue 14). A ring message is relayed CRDT state:
// whoever sent it, each item in it speaks for its signer only (sign.go).
// A peer whose ring is seeded takes from an incoming ring:
//
//   - a vote that its voter signed;
//   - a transfer state that its issuer signed; a Done claim only with a
//     certificate of votes that their voters signed, the issuer's among
//     them. A claim is not a conclusion: the receiver accepts it only by
//     the quorum rule (Ring.acceptable in transfer.go);
//   - an entry state that its writer signed, and only if the writer, or
//     the peer that sent the message, is the effective owner, in the
//     receiver's own ring, of the token's current state (or, for a token
//     the receiver has not seen, of the span the token falls in). Only an
//     owner changes or splits its space; an owner that relays a later state
//     of what it gave away vouches for it (it checked the chain the
//     receiver missed). Tokens are taken in increasing order, so a grant
//     and the new owner's changes inside it pass in one message.
//
// Everything else is dropped and counted: ipam_forged_entry,
// ipam_forged_vote, ipam_forged_transfer, ipam_forged_certificate (a bad
// signature), ipam_entry_unauthorized (a well signed state its writer had
// no right to make, as this peer sees the ring), ipam_done_refused_live
// (a Done claim for this peer or for a peer it can reach). A state refused
// for lack of authority is offered again by the next anti-entropy round,
// and taken once the receiver has caught up.
//
// A peer with no ring yet (a joiner, or one whose ipam.db was set aside)
// has nothing to check authority against: it takes the first ring whose
// signatures all verify (trust on first use, as it trusts the member it
// joined through; entries without any signature, kept from a version-2
// ring, are taken too), and checks every later one as above.

// adoptLocked takes in whole into the unseeded ring next, if every
// signature in it verifies.
func (a *Allocator) adoptLocked(next, in *Ring) (bool, error) {
	for i := range in.Entries {
		if in.Entries[i].Sig == (key.Signature{}) {
			continue // unsigned: kept from a version-2 ring (legacy.go)
		}
		if !a.verify.entry(in, &in.Entries[i]) {
			a.count("ipam_forged_entry")
			return false, fmt.Errorf("ipam: ring refused: entry %v has a bad signature", u2a(in.Entries[i].Token))
		}
	}
	for i := range in.Votes {
		if !a.verify.vote(in, &in.Votes[i]) {
			a.count("ipam_forged_vote")
			return false, fmt.Errorf("ipam: ring refused: a vote of %s has a bad signature", in.Votes[i].Voter.Name())
		}
	}
	for i := range in.Transfers {
		t := &in.Transfers[i]
		if !a.verify.transfer(in, t) {
			a.count("ipam_forged_transfer")
			return false, fmt.Errorf("ipam: ring refused: a transfer of %s has a bad signature", t.Dead.Name())
		}
		if !a.verify.cert(in, t) {
			a.count("ipam_forged_certificate")
			return false, fmt.Errorf("ipam: ring refused: a transfer of %s has a bad certificate", t.Dead.Name())
		}
	}
	changed, err := next.Merge(in)
	if err != nil {
		return false, err
	}
	next.conclude(a.self)
	return changed, nil
}

// mergeCheckedLocked folds into next (seeded, same network as in) what
// the items of in may change, as the comment above says. It returns
// whether next changed and how many items it refused.
func (a *Allocator) mergeCheckedLocked(next, in *Ring, from key.Public) (changed bool, refused int) {
	if in.Used && !next.Used {
		next.Used = true
		changed = true
	}
	// Votes and transfers first: a transfer concluded here gives its
	// issuer authority over the dead peer's entries.
	for i := range in.Votes {
		v := in.Votes[i]
		k, found := slices.BinarySearchFunc(next.Votes, v, cmpVote)
		if found && !voteLess(next.Votes[k], v) {
			continue // nothing new: no signature to check
		}
		if !a.verify.vote(next, &v) {
			a.count("ipam_forged_vote")
			refused++
			continue
		}
		if found {
			next.Votes[k] = v
		} else {
			if len(next.Votes) >= MaxVotes {
				a.count("ipam_ring_full")
				refused++
				continue
			}
			next.Votes = slices.Insert(next.Votes, k, v)
		}
		changed = true
	}
	var claims []Transfer
	for i := range in.Transfers {
		t := in.Transfers[i]
		k, found := next.transferIndex(t.Dead, t.Issuer)
		if found && !transferLess(next.Transfers[k], t) {
			continue
		}
		if !a.verify.transfer(next, &t) {
			a.count("ipam_forged_transfer")
			refused++
			continue
		}
		if !a.verify.cert(next, &t) {
			a.count("ipam_forged_certificate")
			refused++
			continue
		}
		t.Cert, t.Accepted = slices.Clone(t.Cert), false
		if found {
			next.Transfers[k] = t
		} else {
			if len(next.Transfers) >= MaxTransfers || next.certVotes()+len(t.Cert) > MaxCertVotes {
				a.count("ipam_ring_full")
				refused++
				continue
			}
			next.Transfers = slices.Insert(next.Transfers, k, t)
		}
		if t.Done {
			claims = append(claims, t)
		}
		changed = true
	}
	if next.conclude(a.self) {
		changed = true
	}
	for _, t := range claims {
		if _, heir := next.doneTransfer(t.Dead); heir {
			continue
		}
		if t.Dead == a.self || a.reachable[t.Dead] {
			a.count("ipam_done_refused_live")
			a.log.Warn("refused a claim to the space of a live peer", "peer", t.Dead.Name(), "claimed_by", t.Issuer.Name(), "from", from.Name())
		}
	}
	// Entries. A new token is taken only with the token that follows it in
	// the incoming ring (its span's end): taking a grant without its end
	// would make this peer believe a span reaches further than it does
	// (and, were the span ours, allocate there). A token refused for that
	// is left for a later message, and the pass runs again without it.
	before := next
	forbidden := map[uint32]bool{}
	for {
		next = before.Clone()
		c, r, unbounded := a.entryPassLocked(next, before, in, from, forbidden, false)
		if len(unbounded) == 0 {
			a.entryPassLocked(before.Clone(), before, in, from, forbidden, true) // count once
			*before = *next
			return changed || c, refused + r
		}
		for _, i := range unbounded {
			forbidden[in.Entries[i].Token] = true
		}
	}
}

// entryPassLocked takes into next the entry states of in that their
// writer (or from) has authority over, skipping forbidden tokens, and
// returns the indexes in in of the new tokens taken without the token
// after them. count says whether to count the refusals.
func (a *Allocator) entryPassLocked(next, before, in *Ring, from key.Public, forbidden map[uint32]bool, count bool) (changed bool, refused int, unbounded []int) {
	refuse := func(what string) {
		refused++
		if count {
			a.count(what)
		}
	}
	var taken []int // indexes in in of new tokens taken
	for i := range in.Entries {
		e := in.Entries[i]
		j := next.find(e.Token)
		if j < 0 {
			continue // cannot happen: a seeded ring starts at the range start
		}
		exists := next.Entries[j].Token == e.Token
		if exists && !entryLess(next.Entries[j], e) {
			continue
		}
		if !a.verify.entry(next, &e) {
			refuse("ipam_forged_entry")
			continue
		}
		if forbidden[e.Token] {
			refuse("ipam_entry_unauthorized")
			continue
		}
		auth := next.heir(next.Entries[j].Owner)
		// A new token may be the end of a grant taken just before it (the
		// granter inserts both ends): the span's owner before this message
		// has authority there too.
		auth0 := auth
		if !exists {
			auth0 = before.heir(before.Entries[before.find(e.Token)].Owner)
		}
		if e.Writer != auth && from != auth && e.Writer != auth0 && from != auth0 {
			refuse("ipam_entry_unauthorized")
			continue
		}
		if exists {
			next.Entries[j] = e
		} else {
			if len(next.Entries) >= MaxEntries {
				refuse("ipam_ring_full")
				continue
			}
			next.insertToken(e)
			taken = append(taken, i)
		}
		changed = true
	}
	for _, i := range taken {
		if i+1 < len(in.Entries) {
			k := next.find(in.Entries[i+1].Token)
			if k < 0 || next.Entries[k].Token != in.Entries[i+1].Token {
				unbounded = append(unbounded, i)
			}
		}
	}
	return changed, refused, unbounded
}

// hasNews reports whether ours holds a state that theirs lacks or holds
// older: whether sending ours could teach its holder anything.
func hasNews(ours, theirs *Ring) bool {
	if ours.Used && !theirs.Used {
		return true
	}
	j := 0
	for _, e := range ours.Entries {
		for j < len(theirs.Entries) && theirs.Entries[j].Token < e.Token {
			j++
		}
		if j == len(theirs.Entries) || theirs.Entries[j].Token != e.Token || entryLess(theirs.Entries[j], e) {
			return true
		}
	}
	for _, v := range ours.Votes {
		if w, ok := theirs.vote(v.Voter, v.Dead); !ok || voteLess(w, v) {
			return true
		}
	}
	for _, t := range ours.Transfers {
		k, found := theirs.transferIndex(t.Dead, t.Issuer)
		if !found || transferLess(theirs.Transfers[k], t) {
			return true
		}
	}
	return false
}
