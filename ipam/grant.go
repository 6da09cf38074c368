package ipam

import (
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// What a grant's requester is sent (issue 18). A requester's ring may lag
// the donor's: a joiner's is the one a neighbour had when it joined, which
// may lack grants the donor made since, and then it lacks the token after
// its new span (the grant is refused until it has it: authority.go) and
// the states of the peers the donor granted to (refused: in its ring the
// donor still owns that space). So the donor answered every request with
// its whole ring: about 190 KB at 1,000 owners, four channel messages
// that a full connection queue drops one by one (simulated N=1,000:
// joiners whose donor granted and whose answer never came, with
// control_send_dropped in the hundreds per batch).
//
// Now the requester sends its digest (digest.go) just before the request,
// on the same path. The donor answers the digest as any digest, with the
// stretches of its ring that differ, as asks (a joiner that owns nothing
// takes them from its donor unchecked, authority.go, and a peer that owns
// space checks them as it checked the whole ring); then it grants and
// answers the request with the grant alone (the entries it changed, with
// their bounds: the token after the new span is in the requester's ring
// or came with the digest's answer). A request without a digest just
// before it (a requester of wire version 4 from before this change, or a
// digest lost on the way) is answered with the whole ring, as before.
// Neither message is new: older donors answer the digest and the request
// as they did (the whole ring).

// digestWindow is how long after a peer's digest a request of that peer
// counts as following it.
const digestWindow = 5 * time.Second

// digestAnsweredLocked records that we answered a digest of from.
func (a *Allocator) digestAnsweredLocked(from key.Public) {
	if len(a.digestAt) >= MaxPeers {
		clear(a.digestAt)
	}
	a.digestAt[from] = a.now()
}

// grantAnswerLocked returns what answers from's request: change (the
// parts of a grant just made; nil when re-sending an earlier grant, then
// the entries from owns with their bounds) if from's digest came just
// before, else the whole ring.
func (a *Allocator) grantAnswerLocked(from key.Public, change [][]byte) ([][]byte, error) {
	at, ok := a.digestAt[from]
	if !ok || a.now().Sub(at) > digestWindow {
		a.count("ipam_grant_answered_whole")
		return ringParts(a.ring, nil, false, false)
	}
	delete(a.digestAt, from)
	a.count("ipam_grant_answered_change")
	if change != nil {
		return change, nil
	}
	marks := make([]bool, len(a.ring.Entries))
	for i, e := range a.ring.Entries {
		if e.Owner == from {
			marks[i] = true
		}
	}
	return ringParts(a.ring, marks, false, false)
}
