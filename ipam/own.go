package ipam

import (
	"bytes"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// This peer's own entries (issue 18). The allocator reads the entries it
// owns on every change of the ring (free counts of inherited entries,
// allocations lost), every Tick (free counts), every arrival of a peer
// (SendOwn) and every allocation; each read was a pass over the whole
// ring, so each of N peers paid O(N) per change and per second. The ring
// keeps an index of the tokens one peer effectively owns instead
// (ownIndex, built on first use), which every change of an entry's owner
// keeps true (noteOwner: a Ring method, or the merge's record, undo.go);
// whatever changes entries wholesale (a merge of whole rings, seeding,
// a copy) drops it, to be built again when next read. Effective owners
// follow completed transfers (heir), so the index holds the entries of
// the peer and of every dead peer whose space it inherited, and is built
// again when that set changes.
//
// Signing likewise: signPending looked for unsigned entries of ours over
// the whole ring on every change. The entries this peer writes (Grant,
// setFree) are noted (pending) and signPending looks at those, after one
// pass over the whole ring for a state it did not follow (loaded,
// merged wholesale, copied, or holding an unsigned entry of ours taken
// from elsewhere).

// ownIndex holds the tokens of the entries whose owner is one of owners:
// a peer and the dead peers whose space it inherited.
type ownIndex struct {
	self   key.Public
	owners []key.Public // sorted
	tokens []uint32     // sorted
}

// checkDerived makes every read of the index (and of the kept digest,
// digest.go) compare it with a pass over the whole ring and panic if they
// differ (set by the tests).
var checkDerived bool

// heirsOf returns, sorted, the peers whose entries self effectively owns:
// self (unless self was removed) and the dead peers whose heir is self.
func (r *Ring) heirsOf(self key.Public, buf []key.Public) []key.Public {
	buf = buf[:0]
	if r.heir(self) == self {
		buf = append(buf, self)
	}
	for _, t := range r.Transfers {
		if t.Accepted && t.Dead != self && !slices.Contains(buf, t.Dead) && r.heir(t.Dead) == self {
			buf = append(buf, t.Dead)
		}
	}
	if len(buf) > 1 {
		slices.SortFunc(buf, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	}
	return buf
}

// ownTokens returns the tokens of the entries self effectively owns, in
// ring order. The slice is the index's: the caller must not keep it past
// a change of the ring.
func (r *Ring) ownTokens(self key.Public) []uint32 {
	var buf [4]key.Public
	owners := r.heirsOf(self, buf[:0])
	if x := r.own; x == nil || x.self != self || !slices.Equal(x.owners, owners) {
		x = &ownIndex{self: self, owners: slices.Clone(owners)}
		for i := range r.Entries {
			if slices.Contains(owners, r.Entries[i].Owner) {
				x.tokens = append(x.tokens, r.Entries[i].Token)
			}
		}
		r.own = x
	}
	if checkDerived {
		var want []uint32
		for i := range r.Entries {
			if r.heir(r.Entries[i].Owner) == self {
				want = append(want, r.Entries[i].Token)
			}
		}
		if !slices.Equal(want, r.own.tokens) && len(want)+len(r.own.tokens) > 0 {
			panic("ipam: own index differs from the ring")
		}
	}
	return r.own.tokens
}

// noteOwner keeps the index true to a change of token t's owner from old
// to new (the zero key: the token is new, or gone).
func (r *Ring) noteOwner(t uint32, old, new key.Public) {
	x := r.own
	if x == nil || old == new {
		return
	}
	if slices.Contains(x.owners, old) {
		if i, found := slices.BinarySearch(x.tokens, t); found {
			x.tokens = slices.Delete(x.tokens, i, i+1)
		}
	}
	if slices.Contains(x.owners, new) {
		if i, found := slices.BinarySearch(x.tokens, t); !found {
			x.tokens = slices.Insert(x.tokens, i, t)
		}
	}
}

// dropDerived forgets what the ring keeps about its entries (the own
// index, which of our entries are unsigned, the digest's stretch hashes)
// after a change that is not followed entry by entry.
func (r *Ring) dropDerived() {
	r.own = nil
	r.dig = nil
	r.signedFor = key.Public{}
	r.pending = nil
}

// notePending notes that the entry of token t was written unsigned by
// this ring's signer (signPending signs it).
func (r *Ring) notePending(t uint32) {
	if !r.signedFor.IsZero() {
		r.pending = append(r.pending, t)
	}
}

// noteUnsigned: e, an entry state taken from elsewhere, is unsigned (kept
// from a version-2 ring); if its writer is our signer the next
// signPending makes a whole pass, as it did for every change.
func (r *Ring) noteUnsigned(e *Entry) {
	if e.Sig == (key.Signature{}) {
		r.signedFor = key.Public{}
	}
}

// ownEntries returns the indexes and spans of the entries self
// effectively owns.
func (a *Allocator) ownEntries() (idx []int, spans []Span) {
	for _, t := range a.ring.ownTokens(a.self) {
		i := a.ring.find(t)
		idx = append(idx, i)
		spans = append(spans, a.ring.entrySpan(i))
	}
	return idx, spans
}

// ownSpans is Ring.Spans(self): our spans, adjacent ones coalesced.
func (a *Allocator) ownSpans() []Span {
	var out []Span
	for _, t := range a.ring.ownTokens(a.self) {
		s := a.ring.entrySpan(a.ring.find(t))
		if n := len(out); n > 0 && uint64(out[n-1].Last)+1 == uint64(s.First) {
			out[n-1].Last = s.Last
			continue
		}
		out = append(out, s)
	}
	return out
}
