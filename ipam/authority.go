package ipam

import (
	"bytes"
	"fmt"
	"slices"
	"time"

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
// for lack of authority is held and the owner asked (below), or offered
// again by a later anti-entropy round, and taken once the receiver has
// caught up.
//
// A peer with no ring yet (a joiner, or one whose ipam.db was set aside)
// has nothing to check authority against: it takes the first ring whose
// signatures all verify (trust on first use, as it trusts the member it
// joined through; entries without any signature, kept from a version-2
// ring, are taken too), and checks every later one as above.

// adoptLocked takes in whole into the unseeded ring next, if every
// signature in it verifies.
func (a *Allocator) adoptLocked(next, in *Ring) (bool, error) {
	if err := a.verifyAllLocked(in); err != nil {
		return false, err
	}
	changed, err := next.Merge(in)
	if err != nil {
		return false, err
	}
	next.conclude(a.self)
	return changed, nil
}

// verifyAllLocked checks every signature in in (entries without any, kept
// from a version-2 ring, pass).
func (a *Allocator) verifyAllLocked(in *Ring) error {
	for i := range in.Entries {
		if in.Entries[i].Sig == (key.Signature{}) {
			continue // unsigned: kept from a version-2 ring (legacy.go)
		}
		if !a.verify.entry(in, &in.Entries[i]) {
			a.count("ipam_forged_entry")
			return fmt.Errorf("ipam: ring refused: entry %v has a bad signature", u2a(in.Entries[i].Token))
		}
	}
	for i := range in.Votes {
		if !a.verify.vote(in, &in.Votes[i]) {
			a.count("ipam_forged_vote")
			return fmt.Errorf("ipam: ring refused: a vote of %s has a bad signature", in.Votes[i].Voter.Name())
		}
	}
	for i := range in.Transfers {
		t := &in.Transfers[i]
		if !a.verify.transfer(in, t) {
			a.count("ipam_forged_transfer")
			return fmt.Errorf("ipam: ring refused: a transfer of %s has a bad signature", t.Dead.Name())
		}
		if !a.verify.cert(in, t) {
			a.count("ipam_forged_certificate")
			return fmt.Errorf("ipam: ring refused: a transfer of %s has a bad certificate", t.Dead.Name())
		}
	}
	return nil
}

// mergeCheckedLocked folds into next (seeded, same network as in) what
// the items of in may change, as the comment above says. bound marks the
// entries of in that are only a run's bound (parts.go): taken as later
// states of tokens next holds, never as new tokens; nil marks none. It
// returns whether next changed and how many items it refused. It changes
// next in place and records in u what it changed (undo.go): the caller
// undoes it if the result must be refused.
func (a *Allocator) mergeCheckedLocked(next, in *Ring, from key.Public, bound []bool, u *mergeUndo) (changed bool, refused int) {
	u.begin(next)
	if in.Used && !next.Used {
		next.Used = true
		changed = true
	}
	// Votes and transfers first: a transfer concluded here gives its
	// issuer authority over the dead peer's entries.
	for i := range in.Votes {
		v := in.Votes[i]
		if next.forgotten(v.Dead, false) {
			continue // its transfer is concluded here (transfer.go, forget)
		}
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
		if next.forgotten(t.Dead, t.Done) {
			continue
		}
		k, found := next.transferIndex(t.Dead, t.Issuer)
		if found && !transferLess(next.Transfers[k], t) {
			if cur := &next.Transfers[k]; cur.Done && t.Done {
				// Maybe another slice of its certificate (parts.go).
				c, r := a.takeCertLocked(next, cur, t)
				changed, refused = changed || c, refused+r
			}
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
			if next.certVotes()-len(next.Transfers[k].Cert)+len(t.Cert) > MaxCertVotes {
				a.count("ipam_ring_full")
				refused++
				continue
			}
			t.Cert, _ = unionCert(next.Transfers[k].Cert, t.Cert)
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
	var forbidden map[uint32]bool
	donor := a.trustsDonorLocked(from)
	if donor {
		a.count("ipam_donor_ring_trusted")
	}
	for {
		var rs []refusal
		c, unbounded := a.entryPassLocked(next, u, in, from, donor, forbidden, bound, &rs)
		if len(unbounded) == 0 {
			a.refusedLocked(rs, from) // the last pass's, once
			return changed || c, refused + len(rs)
		}
		u.undoEntries(next, 0) // the pass runs again from the ring before it
		if forbidden == nil {
			forbidden = map[uint32]bool{}
		}
		for _, i := range unbounded {
			forbidden[in.Entries[i].Token] = true
		}
	}
}

// takeCertLocked folds into cur (a Done claim next holds) the certificate
// votes of t (the same claim, maybe another slice of its certificate) that
// cur lacks or holds older, each only if its voter signed it. It returns
// whether cur changed and how many votes it refused.
func (a *Allocator) takeCertLocked(next *Ring, cur *Transfer, t Transfer) (changed bool, refused int) {
	if !certAdds(cur.Cert, t.Cert) {
		return false, 0
	}
	var ok []CertVote
	for i := range t.Cert {
		c := t.Cert[i]
		if !a.verify.certVote(next, cur, &c) {
			a.count("ipam_forged_certificate")
			refused++
			continue
		}
		ok = append(ok, c)
	}
	cert, added := unionCert(cur.Cert, ok)
	if !added {
		return false, refused
	}
	if next.certVotes()-len(cur.Cert)+len(cert) > MaxCertVotes {
		a.count("ipam_ring_full")
		return false, refused + 1
	}
	cur.Cert = cert
	return true, refused
}

// certAdds reports whether the certificate votes b hold one that a lacks
// or holds older (unionCert would add it).
func certAdds(a, b []CertVote) bool {
	for _, c := range b {
		i, found := slices.BinarySearchFunc(a, c.Voter, func(x CertVote, v key.Public) int { return bytes.Compare(x.Voter[:], v[:]) })
		if !found || certVoteLess(a[i], c) {
			return true
		}
	}
	return false
}

// refusal is an entry state a pass refused: why, and the owner that
// would have had to write or send it.
type refusal struct {
	what string
	e    Entry
	auth key.Public
}

// refusedLocked counts the refusals of a merge's last pass; states refused
// for lack of authority are held and their owners asked (see below).
func (a *Allocator) refusedLocked(rs []refusal, from key.Public) {
	for _, r := range rs {
		a.count(r.what)
		if (r.what != "ipam_entry_unauthorized" && r.what != "ipam_grant_not_from_granter") || r.auth.IsZero() {
			continue
		}
		a.holdLocked(r.e, from)
		if _, asking := a.askAuth[r.auth]; r.auth != a.self && (asking || len(a.askAuth) < maxAsk) {
			if a.askAuth == nil {
				a.askAuth = map[key.Public]askState{}
			}
			st := a.askAuth[r.auth]
			if st.since.IsZero() {
				st.since = a.now()
			}
			if len(st.tokens) < maxPartEntries {
				st.tokens = append(st.tokens, r.e.Token)
			}
			a.askAuth[r.auth] = st
		}
	}
}

// entryPassLocked takes into next the entry states of in that their
// writer (or from) has authority over, skipping forbidden tokens, adds
// the states it refused to rs, and returns the indexes in in of the new
// tokens taken without the token after them. It records its changes in
// u, which holds no entry changes before it (the ring before the pass is
// next without them).
func (a *Allocator) entryPassLocked(next *Ring, u *mergeUndo, in *Ring, from key.Public, donor bool, forbidden map[uint32]bool, bound []bool, rs *[]refusal) (changed bool, unbounded []int) {
	var taken []int // indexes in in of new tokens (and grants) taken
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
		if !exists && bound != nil && bound[i] {
			continue // a bound says where a span ends, not that its token exists here
		}
		if !a.verify.entry(next, &e) {
			*rs = append(*rs, refusal{what: "ipam_forged_entry", e: e})
			continue
		}
		if e.Owner == a.self && e.Writer != a.self && from != e.Writer && next.heir(next.Entries[j].Owner) != a.self {
			// Space granted to us, from a peer other than its granter:
			// see grantFromGranter.
			*rs = append(*rs, refusal{what: "ipam_grant_not_from_granter", e: e, auth: e.Writer})
			continue
		}
		if forbidden[e.Token] {
			*rs = append(*rs, refusal{what: "ipam_entry_unauthorized", e: e, auth: next.heir(next.Entries[j].Owner)})
			continue
		}
		auth := next.heir(next.Entries[j].Owner)
		// A new token may be the end of a grant taken just before it (the
		// granter inserts both ends): the span's owner before this message
		// has authority there too.
		auth0 := auth
		if !exists {
			auth0 = next.heir(u.ownerBefore(next, e.Token))
		}
		if !donor && e.Writer != auth && from != auth && e.Writer != auth0 && from != auth0 {
			*rs = append(*rs, refusal{what: "ipam_entry_unauthorized", e: e, auth: auth})
			continue
		}
		if exists {
			if e.Owner != next.Entries[j].Owner {
				// A grant of a span we knew: it ends at the granter's next
				// token, which we may lack (the granter split its span
				// before, and those tokens have not reached us), and we
				// would believe the span reaches further than it does.
				// Taken only with the token after it, as a new token is.
				taken = append(taken, i)
			}
			u.setEntry(next, j, e)
		} else {
			if len(next.Entries) >= MaxEntries {
				*rs = append(*rs, refusal{what: "ipam_ring_full", e: e})
				continue
			}
			u.insert(next, e)
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
	return changed, unbounded
}

// grantFromGranter: space granted to this peer is taken only from its
// granter (the message's sender is the state's writer). A state arrives
// with the token after it in the message (the span's end), but that end
// is the sender's view: a third peer that missed the granter's earlier
// splits sends the grant with a later bound, and the grantee, lacking
// those splits too, believed it owned space the granter had given others
// (two owners of one span; in a simulated build with late messages a
// grantee took its grant from another peer's authority ask). It then
// refused the other owners' states there (in its ring it was the owner)
// and the rings never agreed. The granter's bound is exact: its own span
// ends at its own next token. A grant from anyone else is held and the
// granter asked (as for a refusal for authority, below).

// The donor's ring (issue 18). A joiner's ring is the one a neighbour had
// when it joined. Within a batch of joiners the new peers become donors
// at once (a grant is half the donor's largest block, so the grantee has
// as much free space as its donor), so the donor D a joiner asks may hold
// space it got from P after that ring was taken, and P its space from Q:
// D's grant and D's states were refused (in the joiner's ring P owns that
// space) until the joiner had asked P, and P's until it had asked Q, a
// round trip or more per link (simulated N=300 in batches of 50: a joiner
// with 4 requests and no space after 2 minutes, 61 states refused, 8
// owners asked). So a peer that owns no space and holds no address takes
// the ring of a donor it asked for space as it took its first ring, with
// signatures checked and authority not: trust on first use extended to the
// donors of its first grant. What that trusts, and why it is acceptable,
// is in docs/architecture.md (Security).

// trustsDonorLocked reports whether a ring from peer from is taken without
// authority checks: we own nothing and hold no address, we want space,
// and from is a donor we asked for it (now, or earlier in this want).
func (a *Allocator) trustsDonorLocked(from key.Public) bool {
	if !a.wantSpace || from == a.self || len(a.allocs) > 0 || len(a.pendingClaims) > 0 {
		return false
	}
	if from != a.reqDonor && !a.silent[from] {
		return false
	}
	for _, t := range a.ring.ownTokens(a.self) {
		if a.ring.Entries[a.ring.find(t)].Owner == a.self {
			return false
		}
	}
	return true
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

// Held entry states. An honest peer refuses a well signed state when it
// arrives before the state that gave its writer the span: J's first free
// count on the span A just granted it, when J's message overtakes A's
// grant on another path. Rather than wait for anti-entropy to offer it
// again, the refused state is held (its signature checked) with the peer
// that sent it, and taken when a later merge gives its writer, or that
// peer, authority over the token (retryHeldLocked). Held states are bounded
// (maxHeld, oldest arbitrary one dropped first) and dropped once the ring
// holds their token at that version or later.

// Asking the authority. A whole ring carries only the latest state of each
// token: J's free count on the span A granted it, not A's grant. A peer
// that missed the grant (a message lost to a full queue, a partition) can
// take J's state only from A, the owner in its own view, which vouches for
// what it gave away. So a state still held a second after its refusal (the
// grant did not come on another path meanwhile, the usual case) makes this
// peer ask A, from Tick: it sends A the spans it holds there, and A answers
// with its states of them (newsFor), which it takes because A sent them.
// At most maxAsk owners are pending at once, each asked at most once a
// second.
const maxAsk = 4

// askState is what an owner is to be asked about: the tokens of the
// states refused, and when the first was.
type askState struct {
	tokens []uint32
	since  time.Time
}

// askAuthoritiesLocked asks the owners whose refused states are still
// held after a second, and forgets the rest.
func (a *Allocator) askAuthoritiesLocked(o *outbox) {
	now := a.now()
	for auth, st := range a.askAuth {
		if now.Sub(st.since) < time.Second {
			continue
		}
		if now.Sub(a.lastAsk[auth]) < time.Second {
			continue // asked just now: ask again at the next tick
		}
		delete(a.askAuth, auth)
		marks := make([]bool, len(a.ring.Entries))
		any := false
		for _, t := range st.tokens {
			h, still := a.held[t]
			if !still {
				continue
			}
			h.asked = now
			a.held[t] = h
			if j := a.ring.find(t); j >= 0 {
				marks[j], any = true, true
			}
		}
		if !any {
			continue
		}
		if len(a.lastAsk) >= MaxPeers {
			clear(a.lastAsk)
		}
		a.lastAsk[auth] = now
		msgs, err := ringParts(a.ring, marks, false, false)
		if err != nil {
			continue
		}
		askParts(msgs)
		a.count("ipam_authority_asked")
		for _, m := range msgs {
			o.asks = append(o.asks, addressed{auth, m})
		}
	}
}

// maxHeld bounds the held states.
const maxHeld = 1024

type heldEntry struct {
	e    Entry
	from key.Public
	// asked is when an owner was last asked for the token (zero: not
	// yet), and since when the state was first held.
	asked, since time.Time
}

func (a *Allocator) holdLocked(e Entry, from key.Public) {
	if h, ok := a.held[e.Token]; ok && !entryLess(h.e, e) {
		return
	}
	if a.held == nil {
		a.held = map[uint32]heldEntry{}
	}
	if _, ok := a.held[e.Token]; !ok && len(a.held) >= maxHeld {
		for t := range a.held {
			delete(a.held, t)
			a.count("ipam_held_dropped")
			break
		}
	}
	since := a.now()
	if h, ok := a.held[e.Token]; ok {
		since = h.since
	}
	a.held[e.Token] = heldEntry{e: e, from: from, since: since}
}

// Asking again (issue 18). An owner is asked once per refusal, and the
// refusal is what schedules the ask: when the ask or its answer was lost
// (the owner a busy donor, its messages late, 5 % lost in
// TestJoinInBatchesLate), or the owner itself had not yet heard of the
// grant, the state stayed held until gossip brought it again and it was
// refused again: an anti-entropy round later (10 s), or never for a
// state no other peer offers again. A held state still held reAskEvery
// after its ask is asked for again, of the owner in our ring as it is
// now (it may have changed: a grant taken since moves the authority);
// one held longer than heldFor is dropped (gossip brings it again), so
// a peer's held states cost a bounded number of asks.
const (
	reAskEvery = 5 * time.Second
	heldFor    = 2 * time.Minute
)

// reAskLocked schedules asks for the held states whose ask went
// unanswered (see above), and drops those held too long.
func (a *Allocator) reAskLocked() {
	now := a.now()
	for t, h := range a.held {
		if now.Sub(h.since) >= heldFor {
			delete(a.held, t)
			a.count("ipam_held_expired")
			continue
		}
		if h.asked.IsZero() || now.Sub(h.asked) < reAskEvery {
			continue
		}
		j := a.ring.find(t)
		if j < 0 {
			continue
		}
		auth := a.ring.heir(a.ring.Entries[j].Owner)
		if h.e.Owner == a.self && h.e.Writer != a.self {
			auth = h.e.Writer // space granted to us: its granter (grantFromGranter)
		}
		st, asking := a.askAuth[auth]
		if auth == a.self || (!asking && len(a.askAuth) >= maxAsk) {
			continue
		}
		if st.since.IsZero() {
			st.since = now.Add(-time.Second) // it waited long enough: ask at once
		}
		if len(st.tokens) < maxPartEntries && !slices.Contains(st.tokens, t) {
			st.tokens = append(st.tokens, t)
		}
		if a.askAuth == nil {
			a.askAuth = map[key.Public]askState{}
		}
		a.askAuth[auth] = st
		h.asked = now // (askAuthoritiesLocked stamps it again when it asks)
		a.held[t] = h
		a.count("ipam_authority_asked_again")
	}
}

// retryHeldLocked takes into r the held states that r's owners now
// authorize, and drops those r has caught up with. Only states of tokens r
// holds are taken: a new token needs its span's end, which a held state
// alone does not bring. It reports whether r changed, and records the
// changes in u.
func (a *Allocator) retryHeldLocked(r *Ring, u *mergeUndo) bool {
	changed := false
	for progress := true; progress && len(a.held) > 0; {
		progress = false
		for t, h := range a.held {
			j := r.find(t)
			if j < 0 || r.Entries[j].Token != t {
				continue
			}
			if !entryLess(r.Entries[j], h.e) {
				delete(a.held, t)
				continue
			}
			if h.e.Owner != r.Entries[j].Owner && h.e.Owner != r.heir(r.Entries[j].Owner) {
				// A grant needs the token after it (entryPassLocked). An
				// heir's state of an entry it inherited moves no bound:
				// the span was the heir's here already (heir).
				continue
			}
			auth := r.heir(r.Entries[j].Owner)
			if h.e.Writer != auth && h.from != auth {
				continue
			}
			u.setEntry(r, j, h.e)
			delete(a.held, t)
			a.count("ipam_held_taken")
			changed, progress = true, true
		}
	}
	return changed
}
