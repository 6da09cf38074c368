package ipam

import (
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Merging in place (issue 18). A received ring part used to be merged
// into a copy of the ring (Ring.Clone), taken only once the merge had
// passed its checks; the entry pass copied it again for each try (a new
// token without its bound is refused and the pass runs again). At 1,000
// owners a ring is about 140 KB of entries, copied twice for a message
// that changes one of them: 190 µs per change taken, nearly all of it
// the copies (BenchmarkHandleChange), and each of N peers takes every
// change. Now the merge changes our ring itself and records what it
// changed (mergeUndo): the entries by token with their former states,
// and the small tables (the Used flag, votes and transfers, bounded and
// usually empty) as they were. A refused merge (its union would not
// encode) or a pass run again is undone from the record, in reverse
// order; the record also says which entries a relay part taught us
// (what changedSince found by comparing the copy with the ring).

// mergeUndo records what a merge in place changed in a ring.
type mergeUndo struct {
	used      bool
	votes     []Vote
	transfers []Transfer // shallow: a merge replaces certificates, never changes one in place
	entries   []entryUndo
	at        map[uint32]int // token -> its first record in entries, once there are many
}

// entryUndo is one change of an entry: the token's state before it, or
// that the token was inserted.
type entryUndo struct {
	token    uint32
	old      Entry
	inserted bool
}

// begin records r's small tables before a merge.
func (u *mergeUndo) begin(r *Ring) {
	u.used = r.Used
	u.votes = slices.Clone(r.Votes)
	u.transfers = slices.Clone(r.Transfers)
}

// setEntry sets r.Entries[j] to e, recording its state before.
func (u *mergeUndo) setEntry(r *Ring, j int, e Entry) {
	u.record(entryUndo{token: r.Entries[j].Token, old: r.Entries[j]})
	r.noteOwner(e.Token, r.Entries[j].Owner, e.Owner)
	r.Entries[j] = e
	r.noteEntry(e.Token)
	r.noteUnsigned(&e)
}

// insert inserts the new token e into r, recording it.
func (u *mergeUndo) insert(r *Ring, e Entry) {
	u.record(entryUndo{token: e.Token, inserted: true})
	r.insertToken(e)
	r.noteUnsigned(&e)
}

func (u *mergeUndo) record(x entryUndo) {
	u.entries = append(u.entries, x)
	switch {
	case u.at != nil:
		if _, ok := u.at[x.token]; !ok {
			u.at[x.token] = len(u.entries) - 1
		}
	case len(u.entries) > 16:
		u.at = make(map[uint32]int, len(u.entries))
		for i := len(u.entries) - 1; i >= 0; i-- {
			u.at[u.entries[i].token] = i
		}
	}
}

// lookup returns the first record of token t, if any.
func (u *mergeUndo) lookup(t uint32) (entryUndo, bool) {
	if u.at != nil {
		i, ok := u.at[t]
		if !ok {
			return entryUndo{}, false
		}
		return u.entries[i], true
	}
	for _, x := range u.entries {
		if x.token == t {
			return x, true
		}
	}
	return entryUndo{}, false
}

// ownerBefore returns the owner, before the recorded changes, of the
// entry whose span held token t: the nearest token at or below t that
// was not inserted since, in its former state if it changed.
func (u *mergeUndo) ownerBefore(r *Ring, t uint32) key.Public {
	for k := r.find(t); k >= 0; k-- {
		x, ok := u.lookup(r.Entries[k].Token)
		switch {
		case !ok:
			return r.Entries[k].Owner
		case !x.inserted:
			return x.old.Owner
		}
	}
	return key.Public{} // cannot happen: a seeded ring holds the range's first token
}

// undoEntries undoes the entry changes recorded from the mark'th on, last
// first, and forgets them.
func (u *mergeUndo) undoEntries(r *Ring, mark int) {
	for i := len(u.entries) - 1; i >= mark; i-- {
		x := u.entries[i]
		j := r.find(x.token)
		if j < 0 || r.Entries[j].Token != x.token {
			continue // cannot happen: the record is of a token r holds
		}
		if x.inserted {
			r.noteOwner(x.token, r.Entries[j].Owner, key.Public{})
			r.Entries = slices.Delete(r.Entries, j, j+1)
		} else {
			r.noteOwner(x.token, r.Entries[j].Owner, x.old.Owner)
			r.Entries[j] = x.old
			r.noteUnsigned(&x.old)
		}
		r.noteEntry(x.token)
	}
	u.entries = u.entries[:mark]
	if u.at != nil {
		u.at = nil
		if len(u.entries) > 16 {
			u.at = make(map[uint32]int, len(u.entries))
			for i := len(u.entries) - 1; i >= 0; i-- {
				u.at[u.entries[i].token] = i
			}
		}
	}
}

// undo restores r as it was at begin.
func (u *mergeUndo) undo(r *Ring) {
	u.undoEntries(r, 0)
	r.Used, r.Votes, r.Transfers = u.used, u.votes, u.transfers
}

// marks marks the entries of r the recorded changes touched (changedSince
// for a merge in place), and reports whether there was one; a merge whose
// only change is the Used flag marks the first entry, so the flag travels.
func (u *mergeUndo) marks(r *Ring) (marks []bool, anyEntry, votes bool) {
	marks = make([]bool, len(r.Entries))
	for _, x := range u.entries {
		if j := r.find(x.token); j >= 0 && r.Entries[j].Token == x.token {
			marks[j], anyEntry = true, true
		}
	}
	votes = !slices.Equal(r.Votes, u.votes) || !slices.EqualFunc(r.Transfers, u.transfers, sameTransferState)
	if r.Used && !u.used && !anyEntry && len(marks) > 0 {
		marks[0], anyEntry = true, true
	}
	return marks, anyEntry, votes
}
