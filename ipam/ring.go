package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Seed names the network a ring belongs to: the peer that created it and a
// random ID drawn at creation. Two rings with different seeds never merge.
type Seed struct {
	Peer key.Public
	ID   uint64
}

// IsZero reports whether s is unset (the ring has not been seeded yet).
func (s Seed) IsZero() bool { return s == Seed{} }

func (s Seed) String() string {
	if s.IsZero() {
		return "unseeded"
	}
	return fmt.Sprintf("%s/%016x", s.Peer.Name(), s.ID)
}

// Entry is one token of the ring. It owns the addresses from Token up to the
// next token (or the end of the range). Only the entry's effective owner
// changes it, and every change bumps Version, so for a given token the
// highest version is the truth.
//
// Writer is the peer that made this state and Sig its signature over it
// (sign.go): the owner itself, or the peer that gave the span away (a
// grant), or the heir of a removed owner. A receiver takes a state only
// when Writer (or the peer that sent it) has authority over the token's
// span in the receiver's own ring (authority.go).
type Entry struct {
	Token   uint32 // an IPv4 address as a big-endian integer
	Owner   key.Public
	Version uint32
	Free    uint32 // free addresses in the entry, as last published by the owner
	Writer  key.Public
	Sig     key.Signature
}

// Transfer is an rmpeer request: Issuer asks to inherit Dead's ranges. Done
// and Withdrawn are the issuer's signed claims (Sig covers the state and,
// for Done, the certificate), never both; a merge keeps the higher state.
// Done is only a claim: each peer concludes for itself (Accepted) from the
// certificate and its own vote (Ring.conclude); only Accepted moves space.
type Transfer struct {
	Dead, Issuer key.Public
	Done         bool
	Withdrawn    bool
	Sig          key.Signature
	// Cert is, with Done, the quorum certificate: the signed votes for
	// Issuer of every elector it counted, sorted by voter (a receiver
	// holds the union of the slices it was sent, parts.go).
	Cert []CertVote
	// Accepted is this peer's conclusion that the transfer is complete.
	// It is local: never on the wire, recomputed when a ring is loaded.
	Accepted bool
}

// CertVote is one vote of a certificate: Voter's vote, at Seq, for the
// transfer's issuer to inherit its dead peer, with Voter's signature.
type CertVote struct {
	Voter key.Public
	Seq   uint32
	Sig   key.Signature
}

// Vote is Voter's current choice among the transfers of Dead. Only Voter
// changes it; every change bumps Seq. Sig is Voter's signature.
type Vote struct {
	Voter, Dead key.Public
	Seq         uint32
	Issuer      key.Public
	Sig         key.Signature
}

// Span is an inclusive range of IPv4 addresses as integers.
type Span struct{ First, Last uint32 }

// Size is the number of addresses in s.
func (s Span) Size() uint64 { return uint64(s.Last) - uint64(s.First) + 1 }

// Contains reports whether a is in s.
func (s Span) Contains(a uint32) bool { return a >= s.First && a <= s.Last }

func (s Span) String() string {
	return u2a(s.First).String() + "-" + u2a(s.Last).String()
}

// Ring is the IPAM CRDT: the overlay range cut into owned entries, plus the
// rmpeer transfers and votes. It is pure data: no locks, no clock, no I/O.
// The zero-entry ring (no seed) is a joining peer's ring before gossip.
//
// Invariants (checked by Validate): entries sorted by token, unique, inside
// the range, and the first token is the range's first address whenever the
// ring is seeded (so the entries cover the range exactly once).
type Ring struct {
	Range netip.Prefix
	Seed  Seed
	// Used is set, for good, by the first allocation (other than a host
	// address), claim or rmpeer in the network (an OR on merge); a grant
	// does not set it. A network nobody used may give way to another one
	// (giveway.go); a used one never does.
	Used      bool
	Entries   []Entry
	Transfers []Transfer // sorted by (Dead, Issuer)
	Votes     []Vote     // sorted by (Voter, Dead)

	// signed: the indexes of the entries the last signPending signed
	// (scratch, not state: never compared, copied or sent).
	signed []int
	// Derived from the entries, never compared, copied or sent (own.go):
	// own indexes one peer's entries; signedFor is the peer whose
	// unsigned entries the last signPending found by a whole pass, and
	// pending the tokens it wrote since (zero: the next pass is whole).
	own       *ownIndex
	signedFor key.Public
	pending   []uint32
	// dig is the digest's stretch hashes, kept entry by entry (digest.go).
	dig *stretchHashes
}

// Errors.
var (
	ErrSeedMismatch = errors.New("ipam: rings of two different networks")
	// ErrOtherNetwork: a space request for another network than ours (one
	// side gave its network up for another one and the other has not
	// heard yet, giveway.go).
	ErrOtherNetwork  = errors.New("ipam: space request for another network")
	ErrRangeMismatch = errors.New("ipam: rings of two different ranges")
	ErrNotOwner      = errors.New("ipam: not the owner")
	ErrBadRange      = errors.New("ipam: range must be an IPv4 prefix between /8 and /30")
	ErrRingFull      = errors.New("ipam: ring has reached its size bound")
)

// SeedMismatchError reports an attempt to merge two separately created
// networks. It matches ErrSeedMismatch with errors.Is.
type SeedMismatchError struct{ Ours, Theirs Seed }

func (e *SeedMismatchError) Error() string {
	return fmt.Sprintf("ipam: refusing to merge two different networks: ours was created by peer %s (seed %016x), theirs by peer %s (seed %016x)",
		e.Ours.Peer.Name(), e.Ours.ID, e.Theirs.Peer.Name(), e.Theirs.ID)
}

func (e *SeedMismatchError) Unwrap() error { return ErrSeedMismatch }

// NewRing returns an empty, unseeded ring over r.
func NewRing(r netip.Prefix) (*Ring, error) {
	if !validRange(r) {
		return nil, fmt.Errorf("%w: %v", ErrBadRange, r)
	}
	return &Ring{Range: r.Masked()}, nil
}

func validRange(r netip.Prefix) bool {
	return r.IsValid() && r.Addr().Is4() && r.Bits() >= 8 && r.Bits() <= 30
}

// span is the whole range.
func (r *Ring) span() Span {
	first := a2u(r.Range.Masked().Addr())
	return Span{first, first + uint32(uint64(1)<<(32-r.Range.Bits())-1)}
}

// Clone returns a deep copy.
func (r *Ring) Clone() *Ring {
	c := *r
	c.signed = nil
	c.dropDerived()
	c.Entries = slices.Clone(r.Entries)
	c.Transfers = slices.Clone(r.Transfers)
	for i := range c.Transfers {
		c.Transfers[i].Cert = slices.Clone(c.Transfers[i].Cert)
	}
	c.Votes = slices.Clone(r.Votes)
	return &c
}

// Equal reports whether two rings hold the same state.
func (r *Ring) Equal(o *Ring) bool {
	return r.Range == o.Range && r.Seed == o.Seed && r.Used == o.Used &&
		slices.Equal(r.Entries, o.Entries) && slices.EqualFunc(r.Transfers, o.Transfers, transferEqual) && slices.Equal(r.Votes, o.Votes)
}

func transferEqual(a, b Transfer) bool {
	return sameTransferState(a, b) && a.Accepted == b.Accepted
}

// sameTransferState compares everything but the local conclusion.
func sameTransferState(a, b Transfer) bool {
	return a.Dead == b.Dead && a.Issuer == b.Issuer && a.Done == b.Done && a.Withdrawn == b.Withdrawn &&
		a.Sig == b.Sig && slices.Equal(a.Cert, b.Cert)
}

// Seeded reports whether the ring belongs to a network yet.
func (r *Ring) Seeded() bool { return !r.Seed.IsZero() }

// SeedTo makes self the owner of the whole range in a new network. It fails
// on a ring that is already seeded.
func (r *Ring) SeedTo(self key.Public, id uint64) error {
	if r.Seeded() {
		return fmt.Errorf("ipam: ring already seeded (%v)", r.Seed)
	}
	if id == 0 {
		id = 1 // zero means unseeded
	}
	sp := r.span()
	r.Seed = Seed{self, id}
	r.dropDerived()
	r.Entries = []Entry{{Token: sp.First, Owner: self, Version: 1, Free: uint32(min(sp.Size(), 1<<32-1)), Writer: self}}
	return nil
}

// Validate checks the structural invariants.
func (r *Ring) Validate() error { return r.validate(true) }

// validate checks the invariants; a part of a ring (whole false) need not
// start at the range start.
func (r *Ring) validate(whole bool) error {
	if !validRange(r.Range) || r.Range != r.Range.Masked() {
		return ErrBadRange
	}
	if !r.Seeded() {
		if len(r.Entries) != 0 {
			return errors.New("ipam: unseeded ring with entries")
		}
	} else if whole && (len(r.Entries) == 0 || r.Entries[0].Token != r.span().First) {
		return errors.New("ipam: seeded ring does not start at the range start")
	}
	sp := r.span()
	for i, e := range r.Entries {
		if !sp.Contains(e.Token) {
			return fmt.Errorf("ipam: token %v outside range %v", u2a(e.Token), r.Range)
		}
		if i > 0 && r.Entries[i-1].Token >= e.Token {
			return errors.New("ipam: tokens not strictly increasing")
		}
		if e.Owner.IsZero() || e.Version == 0 || e.Writer.IsZero() {
			return errors.New("ipam: entry without owner, writer or version")
		}
	}
	for i := 1; i < len(r.Transfers); i++ {
		if cmpTransfer(r.Transfers[i-1], r.Transfers[i]) >= 0 {
			return errors.New("ipam: transfers not sorted")
		}
	}
	for _, t := range r.Transfers {
		if t.Done && t.Withdrawn {
			return errors.New("ipam: transfer both done and withdrawn")
		}
		if (len(t.Cert) > 0) != t.Done || (t.Accepted && !t.Done) {
			return errors.New("ipam: transfer certificate without done, or done without one")
		}
		for i := 1; i < len(t.Cert); i++ {
			if !t.Cert[i-1].Voter.Less(t.Cert[i].Voter) {
				return errors.New("ipam: certificate votes not sorted")
			}
		}
	}
	for i := 1; i < len(r.Votes); i++ {
		if cmpVote(r.Votes[i-1], r.Votes[i]) >= 0 {
			return errors.New("ipam: votes not sorted")
		}
	}
	return nil
}

// MaxVersion bounds entry versions and vote sequence numbers on receipt.
// Each change bumps one by one, so an honest owner would need 2^31 changes
// of one entry to reach it (68 years at one a second), while a forged
// version near 2^32 would make every later change of its owner lose, or
// wrap to zero (issue 14). A ring carrying a larger one is refused whole:
// no honest ring ever holds one, so nothing is lost but the forgery.
const MaxVersion = 1 << 31

// ErrVersionTooHigh is returned for a ring with a version over MaxVersion.
var ErrVersionTooHigh = errors.New("ipam: ring with a version beyond any honest history")

// checkVersions refuses versions over MaxVersion.
func (r *Ring) checkVersions() error {
	for _, e := range r.Entries {
		if e.Version > MaxVersion {
			return fmt.Errorf("%w: entry %v owned by %s at version %d", ErrVersionTooHigh, u2a(e.Token), e.Owner.Name(), e.Version)
		}
	}
	for _, v := range r.Votes {
		if v.Seq > MaxVersion {
			return fmt.Errorf("%w: vote of %s at %d", ErrVersionTooHigh, v.Voter.Name(), v.Seq)
		}
	}
	return nil
}

// entryLess is the total order that decides which of two states of the same
// token wins a merge. Version decides, then the writer (a fork: two
// writers that each had authority in their own view); the rest only breaks
// ties that honest writers never create, so that merge stays a lattice
// join even on bad input.
func entryLess(a, b Entry) bool {
	if a.Version != b.Version {
		return a.Version < b.Version
	}
	if c := bytes.Compare(a.Writer[:], b.Writer[:]); c != 0 {
		return c < 0
	}
	if c := bytes.Compare(a.Owner[:], b.Owner[:]); c != 0 {
		return c < 0
	}
	if a.Free != b.Free {
		return a.Free < b.Free
	}
	return bytes.Compare(a.Sig[:], b.Sig[:]) < 0
}

// transferRank orders a transfer's states: issued < withdrawn < done.
func transferRank(t Transfer) int {
	switch {
	case t.Done:
		return 2
	case t.Withdrawn:
		return 1
	}
	return 0
}

// transferLess orders two states of the same transfer (issuer signatures
// of different states; the signature only breaks ties a misbehaving issuer
// makes).
func transferLess(a, b Transfer) bool {
	if ra, rb := transferRank(a), transferRank(b); ra != rb {
		return ra < rb
	}
	return bytes.Compare(a.Sig[:], b.Sig[:]) < 0
}

func cmpTransfer(a, b Transfer) int {
	if c := bytes.Compare(a.Dead[:], b.Dead[:]); c != 0 {
		return c
	}
	return bytes.Compare(a.Issuer[:], b.Issuer[:])
}

func cmpVote(a, b Vote) int {
	if c := bytes.Compare(a.Voter[:], b.Voter[:]); c != 0 {
		return c
	}
	return bytes.Compare(a.Dead[:], b.Dead[:])
}

// voteLess orders two states of the same (voter, dead) vote.
func voteLess(a, b Vote) bool {
	if a.Seq != b.Seq {
		return a.Seq < b.Seq
	}
	if c := bytes.Compare(a.Issuer[:], b.Issuer[:]); c != 0 {
		return c > 0 // tie: smaller issuer wins
	}
	return bytes.Compare(a.Sig[:], b.Sig[:]) < 0
}

// Merge folds o into r: per token the higher entry wins, transfers and votes
// are unioned (flags ORed, votes by Seq). It is commutative, associative and
// idempotent. A ring of another network or range is refused with an error
// and r is left untouched. changed reports whether r changed.
func (r *Ring) Merge(o *Ring) (changed bool, err error) {
	if r.Range != o.Range {
		return false, fmt.Errorf("%w: ours %v, theirs %v", ErrRangeMismatch, r.Range, o.Range)
	}
	if !o.Seeded() {
		return false, nil
	}
	if r.Seeded() && r.Seed != o.Seed {
		return false, &SeedMismatchError{Ours: r.Seed, Theirs: o.Seed}
	}
	if !r.Seeded() {
		r.Seed = o.Seed
		changed = true
	}
	if o.Used && !r.Used {
		r.Used = true
		changed = true
	}
	// Entries: sorted merge.
	if !slices.Equal(r.Entries, o.Entries) {
		out := make([]Entry, 0, max(len(r.Entries), len(o.Entries)))
		i, j := 0, 0
		for i < len(r.Entries) || j < len(o.Entries) {
			switch {
			case j == len(o.Entries) || (i < len(r.Entries) && r.Entries[i].Token < o.Entries[j].Token):
				out = append(out, r.Entries[i])
				i++
			case i == len(r.Entries) || o.Entries[j].Token < r.Entries[i].Token:
				out = append(out, o.Entries[j])
				changed = true
				j++
			default:
				e := r.Entries[i]
				if entryLess(e, o.Entries[j]) {
					e = o.Entries[j]
					changed = true
				}
				out = append(out, e)
				i++
				j++
			}
		}
		r.Entries = out
		r.dropDerived()
	}
	// Transfers.
	for _, t := range o.Transfers {
		k, found := slices.BinarySearchFunc(r.Transfers, t, cmpTransfer)
		if !found {
			t.Cert = slices.Clone(t.Cert)
			r.Transfers = slices.Insert(r.Transfers, k, t)
			changed = true
			continue
		}
		cur := &r.Transfers[k]
		if cert, added := unionCert(cur.Cert, t.Cert); added {
			cur.Cert = cert // a Done claim's certificate: the union of its slices (parts.go)
			changed = true
		}
		switch {
		case transferLess(*cur, t):
			cert := cur.Cert
			*cur = t
			cur.Cert, _ = unionCert(cert, t.Cert)
			changed = true
		case sameTransferState(*cur, t) && t.Accepted && !cur.Accepted:
			cur.Accepted = true // Check's merge of views; wire rings never carry it
			changed = true
		}
	}
	// Votes.
	for _, v := range o.Votes {
		k, found := slices.BinarySearchFunc(r.Votes, v, cmpVote)
		if !found {
			r.Votes = slices.Insert(r.Votes, k, v)
			changed = true
			continue
		}
		if voteLess(r.Votes[k], v) {
			r.Votes[k] = v
			changed = true
		}
	}
	return changed, nil
}

// find returns the index of the entry owning address a, or -1.
func (r *Ring) find(a uint32) int {
	i, found := slices.BinarySearchFunc(r.Entries, a, func(e Entry, t uint32) int {
		switch {
		case e.Token < t:
			return -1
		case e.Token > t:
			return 1
		}
		return 0
	})
	if found {
		return i
	}
	return i - 1
}

// entrySpan is the span entry i owns.
func (r *Ring) entrySpan(i int) Span {
	last := r.span().Last
	if i+1 < len(r.Entries) {
		last = r.Entries[i+1].Token - 1
	}
	return Span{r.Entries[i].Token, last}
}

// heir resolves p through completed transfers: the ranges of a peer handed
// over by rmpeer belong to the transfer's issuer. Chains are followed a
// bounded number of steps (a cycle can only come from misuse).
func (r *Ring) heir(p key.Public) key.Public {
	if len(r.Transfers) == 0 {
		return p // the usual case, asked per entry: no search
	}
	for range 8 {
		next, ok := r.doneTransfer(p)
		if !ok {
			return p
		}
		p = next
	}
	return p
}

// doneTransfer returns the issuer of the transfer of dead this peer
// concluded complete (Accepted), if any.
// Honest peers complete at most one; with several (misuse), the smallest
// issuer key is taken so every peer resolves alike.
func (r *Ring) doneTransfer(dead key.Public) (key.Public, bool) {
	for _, t := range r.transfersOf(dead) {
		if t.Accepted {
			return t.Issuer, true
		}
	}
	return key.Public{}, false
}

// transfersOf returns the transfers of dead, sorted by issuer.
func (r *Ring) transfersOf(dead key.Public) []Transfer {
	i, _ := slices.BinarySearchFunc(r.Transfers, Transfer{Dead: dead}, cmpTransfer)
	j := i
	for j < len(r.Transfers) && r.Transfers[j].Dead == dead {
		j++
	}
	return r.Transfers[i:j]
}

// Owner returns the effective owner of a.
func (r *Ring) Owner(a netip.Addr) (key.Public, bool) {
	if !a.Is4() || !r.Range.Contains(a) || !r.Seeded() {
		return key.Public{}, false
	}
	i := r.find(a2u(a))
	if i < 0 {
		return key.Public{}, false
	}
	return r.heir(r.Entries[i].Owner), true
}

// Spans returns the coalesced spans whose effective owner is p.
func (r *Ring) Spans(p key.Public) []Span {
	var out []Span
	for i := range r.Entries {
		if r.heir(r.Entries[i].Owner) != p {
			continue
		}
		s := r.entrySpan(i)
		if n := len(out); n > 0 && uint64(out[n-1].Last)+1 == uint64(s.First) {
			out[n-1].Last = s.Last
			continue
		}
		out = append(out, s)
	}
	return out
}

// allSpans is Spans of every effective owner, in one pass.
func (r *Ring) allSpans() map[key.Public][]Span {
	spans := map[key.Public][]Span{}
	for i := range r.Entries {
		p := r.heir(r.Entries[i].Owner)
		s := r.entrySpan(i)
		l := spans[p]
		if n := len(l); n > 0 && uint64(l[n-1].Last)+1 == uint64(s.First) {
			l[n-1].Last = s.Last
			continue
		}
		spans[p] = append(l, s)
	}
	return spans
}

// Owners returns every effective owner with its total size, sorted by key.
func (r *Ring) Owners() map[key.Public]uint64 {
	m := make(map[key.Public]uint64)
	for i := range r.Entries {
		m[r.heir(r.Entries[i].Owner)] += r.entrySpan(i).Size()
	}
	return m
}

// FreeOf sums the free counts published in the entries p effectively owns.
// Inherited entries count zero until the heir republishes them.
func (r *Ring) FreeOf(p key.Public) uint64 {
	var n uint64
	for _, e := range r.Entries {
		if e.Owner == p {
			n += uint64(e.Free)
		}
	}
	return n
}

// insertToken adds a token that no ring has ever held. That holds because
// only the owner of the enclosing span inserts tokens there, and a peer
// learns it owns a span from a ring state that holds every token its former
// owner inserted.
func (r *Ring) insertToken(e Entry) {
	i := r.find(e.Token) + 1
	r.Entries = slices.Insert(r.Entries, i, e)
	r.noteEntry(e.Token)
	r.noteOwner(e.Token, key.Public{}, e.Owner)
}

// Grant hands span s of self's space to peer to. s must lie inside one
// entry that self effectively owns.
func (r *Ring) Grant(self, to key.Public, s Span) error {
	if s.First > s.Last || to.IsZero() {
		return errors.New("ipam: bad grant")
	}
	i := r.find(s.First)
	if i < 0 || r.heir(r.Entries[i].Owner) != self {
		return ErrNotOwner
	}
	es := r.entrySpan(i)
	if !es.Contains(s.Last) {
		return fmt.Errorf("ipam: grant %v crosses entry %v", s, es)
	}
	if len(r.Entries)+2 > MaxEntries {
		return ErrRingFull
	}
	if s.Last < es.Last {
		r.insertToken(Entry{Token: s.Last + 1, Owner: self, Version: 1, Writer: self})
		r.notePending(s.Last + 1)
	}
	if s.First == es.First {
		e := &r.Entries[i]
		r.noteOwner(e.Token, e.Owner, to)
		e.Owner, e.Version, e.Free, e.Writer, e.Sig = to, e.Version+1, 0, self, key.Signature{}
		r.notePending(e.Token)
		r.noteEntry(e.Token)
	} else {
		if e := &r.Entries[i]; e.Owner != self { // inherited: make our ownership explicit
			r.noteOwner(e.Token, e.Owner, self)
			e.Owner, e.Writer, e.Sig = self, self, key.Signature{}
			e.Version++
			r.notePending(e.Token)
			r.noteEntry(e.Token)
		}
		r.insertToken(Entry{Token: s.First, Owner: to, Version: 1, Writer: self})
		r.notePending(s.First)
	}
	return nil
}

// SetFree publishes the free count of self's entry at index i. It reports
// whether the ring changed. An entry granted to self and still in its
// granter's state is written even when the count is the one the granter
// wrote (0): a donor takes such an entry for a grant its requester has
// not taken yet (grantUntakenLocked) and answers every later request
// with its ring instead of space, so a grantee of a span with no free
// address (only a reserved one) asked for space forever (TestSimulation,
// seen with the quick digest rounds' other message order).
func (r *Ring) setFree(self key.Public, i int, free uint32) bool {
	e := &r.Entries[i]
	if r.heir(e.Owner) != self || (e.Owner == self && e.Writer == self && e.Free == free) {
		return false
	}
	r.noteOwner(e.Token, e.Owner, self)
	e.Owner, e.Free, e.Writer, e.Sig = self, free, self, key.Signature{}
	e.Version++
	r.notePending(e.Token)
	r.noteEntry(e.Token)
	return true
}
