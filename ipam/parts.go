package ipam

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Ring parts (wire version 4, issue 18). A ring of a thousand owners is
// larger than one message, and sending the whole ring for every change
// costs O(N) bytes per peer per change. So ring state goes out as parts:
//
//   - a change (a grant, a free count, a vote) goes to every peer as the
//     entries that changed since the last broadcast, each stretch of them
//     with its bound (Allocator.sent, ringChangedLocked);
//   - a whole ring (anti-entropy, a new control neighbour) goes as a few
//     parts of at most maxPartEntries entries each, votes and transfers in
//     one part of their own;
//   - an answer carries what the asker lacks, only where it asked.
//
// msgRingPart body:
//
//	+-----------------------------------------------------------------+
//	| range addr 4 | bits 1 | seed peer 32 | seed id 8 | flags 1       |
//	|   flags: bit 0 used, bit 1 relay; other bits must be zero       |
//	| npeers 2 | npeers × peer key 32 (strictly increasing)           |
//	| nruns 2 | nruns × run:                                          |
//	|   nentries 2 | end 1 | nentries × entry 80 (as msgRing)         |
//	| nvotes 2 | votes | ntransfers 2 | transfers (as msgRing)        |
//	+-----------------------------------------------------------------+
//
// A run is a stretch of consecutive entries of the sender's ring. With end
// 1 the stretch reaches the ring's last token; with end 0 its last entry is
// the bound: the entry that follows the stretch, there so the receiver
// knows where the stretch's last span ends. A receiver takes a bound only
// as a later state of a token it holds, never as a new token (its span's
// end is not in the message). Tokens strictly increase across the whole
// message, only the last run may have end 1, and a run holds at least one
// entry besides its bound. Relay asks the receiver to broadcast what it
// learns from the part (a new control neighbour's ring: after a partition
// heals, each side floods what the other side told it).
//
// A peer with no ring yet puts a ring together from parts (from any
// peers, signatures checked) until they cover the whole range
// (assembleLocked), then takes it as it takes a whole ring, less every
// token whose parts all ended its span at a token the ring lacks (parts
// of different moments: dropUnbounded in messages.go).

const (
	partFlagRelay = 2
	// maxPartEntries bounds the entries of one part, bounds included.
	maxPartEntries = 320

	// One part's votes, transfers and certificate votes (inline
	// signatures too). Version-4 peers before Dec 2026 parse a part of at
	// most 160 votes, 48 transfers, 256 certificate votes and 48 inline
	// signatures: they refuse (counted as malformed) only a part with
	// more inline signatures, which holds a certificate whose votes this
	// peer has forgotten (transfer.go).
	maxPartVotes     = 128
	maxPartTransfers = 48
	maxPartCertVotes = 128
	maxPartCertSigs  = 128

	maxPartEntriesLen = ringFixedLen + 2 + 2*maxPartEntries*key.Len + maxPartEntries*(entryLen+3)
	maxPartVotesLen   = ringFixedLen + 2 + (3*maxPartVotes+2*maxPartTransfers+maxPartCertVotes)*key.Len +
		maxPartVotes*voteLen + maxPartTransfers*transferLen + maxPartCertVotes*certVoteLen + maxPartCertSigs*key.SigLen
)

var partTables = tableBounds{maxPartVotes, maxPartTransfers, maxPartCertVotes, maxPartCertSigs}

var (
	_ [MaxMessage - hdrLen - maxPartEntriesLen]struct{} // a part of entries fits
	_ [MaxMessage - hdrLen - maxPartVotesLen]struct{}   // the part of votes and transfers fits
)

// RingPart is a decoded part: Ring holds its entries (bounds included),
// votes and transfers.
type RingPart struct {
	Ring  *Ring
	Bound []bool // per Ring.Entries: a run's bound
	Relay bool
	// Ask: the part went as msgRingAsk, so its sender wants what it lacks
	// of what the part covers (answers.go).
	Ask bool
	// cover is the token spans the part's runs describe completely.
	cover []Span
}

// wholePart wraps a whole ring (a msgRing).
func wholePart(r *Ring) *RingPart {
	p := &RingPart{Ring: r, Bound: make([]bool, len(r.Entries))}
	if r.Seeded() {
		p.cover = []Span{r.span()}
	}
	return p
}

// Whole reports whether p describes the whole ring.
func (p *RingPart) Whole() bool {
	return len(p.cover) == 1 && p.cover[0] == p.Ring.span() && !slices.Contains(p.Bound, true)
}

// carriesVotes reports whether p speaks for the sender's votes and
// transfers (a whole ring or the part that holds them).
func (p *RingPart) carriesVotes() bool {
	return p.Whole() || len(p.Ring.Votes)+len(p.Ring.Transfers) > 0
}

// AppendRingPartMessage appends p as a message. Runs follow from p.Bound:
// a run ends after each bound, and a last run without one reaches the
// ring's end.
func AppendRingPartMessage(b []byte, p *RingPart) ([]byte, error) {
	r := p.Ring
	if len(p.Bound) != len(r.Entries) {
		return b, ErrRingFull
	}
	if err := r.checkTables(maxPartEntries, partTables); err != nil {
		return b, err
	}
	keys, idx, err := peerTable(r)
	if err != nil {
		return b, err
	}
	var flags byte
	if r.Used {
		flags |= ringFlagUsed
	}
	if p.Relay {
		flags |= partFlagRelay
	}
	typ := msgRingPart
	if p.Ask {
		typ = msgRingAsk
	}
	b = append(b, WireVersion, typ)
	b = appendRingHead(b, r, flags, keys)
	var runs [][2]int
	for s, i := 0, 0; i < len(r.Entries); i++ {
		if p.Bound[i] || i == len(r.Entries)-1 {
			runs = append(runs, [2]int{s, i + 1})
			s = i + 1
		}
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(runs)))
	for _, run := range runs {
		b = binary.BigEndian.AppendUint16(b, uint16(run[1]-run[0]))
		end := byte(1)
		if p.Bound[run[1]-1] {
			end = 0
		}
		b = append(b, end)
		for i := run[0]; i < run[1]; i++ {
			b = appendEntry(b, &r.Entries[i], idx)
		}
	}
	return appendVotesTransfers(b, r, idx, partTables.certSigs)
}

// parseRingPart decodes a part body (of a msgRingAsk if ask). It never
// panics.
func parseRingPart(b []byte, ask bool) (*RingPart, error) {
	rd := &reader{b: b}
	r, pt := parseRingHead(rd, partFlagRelay)
	p := &RingPart{Ring: r, Relay: rd.flags&partFlagRelay != 0, Ask: ask}
	nruns := rd.count(maxPartEntries, "runs")
	total := 0
	for k := 0; k < nruns && rd.err == nil; k++ {
		n := rd.count(maxPartEntries, "run entries")
		end := rd.u8()
		switch {
		case end > 1:
			rd.fail("bad run end %d", end)
		case n == 0 || (end == 0 && n < 2):
			rd.fail("run of %d entries", n)
		case end == 1 && k != nruns-1:
			rd.fail("a run reaching the ring's end before another run")
		}
		if total += n; total > maxPartEntries {
			rd.fail("more than %d entries", maxPartEntries)
		}
		if rd.err != nil {
			break
		}
		first := len(r.Entries)
		for range n {
			var e Entry
			parseEntry(rd, &e, pt)
			r.Entries = append(r.Entries, e)
			p.Bound = append(p.Bound, false)
		}
		last := r.span().Last
		if end == 0 {
			p.Bound[len(p.Bound)-1] = true
			last = r.Entries[len(r.Entries)-1].Token - 1
		}
		if rd.err == nil && r.Entries[first].Token <= last {
			p.cover = append(p.cover, Span{r.Entries[first].Token, last})
		}
	}
	parseVotesTransfers(rd, r, pt, partTables)
	if err := parseEnd(rd, pt); err != nil {
		return nil, err
	}
	if !r.Seeded() {
		return nil, fmt.Errorf("%w: ring part of no network", ErrMalformed)
	}
	if err := r.validate(false); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return p, nil
}

// ringParts encodes, as parts, the entries of r marked in send (every one
// when send is nil), each stretch with its bound, and with votes r's votes
// and transfers in parts of their own (votesParts).
func ringParts(r *Ring, send []bool, votes, relay bool) ([][]byte, error) {
	var vt *Ring
	if votes {
		vt = r
	}
	return ringPartsWith(r, send, vt, relay)
}

// ringPartsWith is ringParts with the votes and transfers of vt (none when
// nil): a change's broadcast sends only what changed (changedVotes).
func ringPartsWith(r *Ring, send []bool, vt *Ring, relay bool) ([][]byte, error) {
	if send == nil {
		return ringPartsSel(r, nil, vt, relay)
	}
	sel := []int{}
	for i, m := range send {
		if m {
			sel = append(sel, i)
		}
	}
	return ringPartsSel(r, sel, vt, relay)
}

// ringPartsSel is ringPartsWith with the entries to send as their indexes,
// increasing (every entry when sel is nil): a change of a few entries is
// encoded without a pass over the ring.
func ringPartsSel(r *Ring, sel []int, vt *Ring, relay bool) ([][]byte, error) {
	var out [][]byte
	part := &RingPart{Ring: &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used}, Relay: relay}
	flush := func() error {
		if len(part.Ring.Entries) == 0 {
			return nil
		}
		msg, err := AppendRingPartMessage(nil, part)
		if err != nil {
			return err
		}
		out = append(out, msg)
		part = &RingPart{Ring: &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used}, Relay: relay}
		return nil
	}
	n, all := len(r.Entries), sel == nil
	// marked reports whether entry j, the k'th of sel, is to be sent.
	marked := func(j, k int) bool { return all || (k < len(sel) && sel[k] == j) }
	for k := 0; ; {
		i := k // the next entry to send, and the next of sel after it
		if !all {
			if k >= len(sel) {
				break
			}
			i = sel[k]
		} else if i >= n {
			break
		}
		j := i + 1
		k++
		for j < n && marked(j, k) && j-i < maxPartEntries-1 {
			j++
			k++
		}
		if all {
			k = j
		}
		// Entries i..j-1, and entry j as their bound unless j is the end.
		size := j - i
		if j < n {
			size++
		}
		if len(part.Ring.Entries)+size > maxPartEntries {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		part.Ring.Entries = append(part.Ring.Entries, r.Entries[i:j]...)
		part.Bound = append(part.Bound, make([]bool, j-i)...)
		if j < n {
			part.Ring.Entries = append(part.Ring.Entries, r.Entries[j])
			part.Bound = append(part.Bound, true)
		}
		if j < n && marked(j, k) {
			// A stretch cut at maxPartEntries: the next part starts at its
			// bound, which may not share a part with it.
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	// Last part first. A part's bound is the next part's first entry; a
	// receiver takes a bound only as a token it already holds, so a new
	// token at the end of a part (a grant, with the end its granter
	// inserted as the bound) was refused as unbounded when the parts came
	// in ring order, and never retried: a joiner given its grant there
	// owned nothing after any number of its donor's rings. In reverse
	// order the bound has arrived (on one connection, in order) when the
	// part that ends at it does.
	slices.Reverse(out)
	if vt != nil {
		vs, err := votesParts(r, vt.Votes, vt.Transfers, relay)
		if err != nil {
			return nil, err
		}
		out = append(out, vs...)
	}
	return out, nil
}

// votesParts encodes votes and transfers as parts within partTables: votes
// in runs of maxPartVotes, and each transfer's certificate cut in slices
// of maxPartCertVotes voters, each slice with the transfer's state. A
// certificate vote is signed by its voter alone and a Done claim's
// signature does not cover its certificate (sign.go), so a receiver takes
// each slice on its own and the certificate it holds grows to the union
// (Ring.Merge). A receiver that takes a part answers (newsFor) only about
// the votes and transfers the part spans, not about what other parts hold.
func votesParts(r *Ring, votes []Vote, transfers []Transfer, relay bool) ([][]byte, error) {
	var out [][]byte
	part := &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used}
	certs := 0
	flush := func() error {
		if len(part.Votes)+len(part.Transfers) == 0 {
			return nil
		}
		msg, err := AppendRingPartMessage(nil, &RingPart{Ring: part, Relay: relay})
		if err != nil {
			return err
		}
		out = append(out, msg)
		part, certs = &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used}, 0
		return nil
	}
	for len(votes) > 0 {
		n := min(len(votes), maxPartVotes-len(part.Votes))
		part.Votes = append(part.Votes, votes[:n]...)
		votes = votes[n:]
		if len(part.Votes) == maxPartVotes {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	for _, t := range transfers {
		cert := t.Cert
		for first := true; first || len(cert) > 0; first = false {
			n := min(len(cert), maxPartCertVotes)
			if len(part.Transfers) == maxPartTransfers || certs+n > maxPartCertVotes {
				if err := flush(); err != nil {
					return nil, err
				}
			}
			s := t
			s.Cert, s.Accepted = cert[:n], false
			part.Transfers = append(part.Transfers, s)
			certs += n
			cert = cert[n:]
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// changedSince marks the entries of r that old lacks or holds in another
// state (all of them when old is nil), and reports whether r's votes or
// transfers differ from old's. A ring whose only change is its Used flag
// marks its first entry, so the flag travels.
func changedSince(r, old *Ring) (marks []bool, anyEntry, votes bool) {
	marks = make([]bool, len(r.Entries))
	if old == nil || old.Seed != r.Seed {
		for i := range marks {
			marks[i] = true
		}
		return marks, len(marks) > 0, true
	}
	j := 0
	for i, e := range r.Entries {
		for j < len(old.Entries) && old.Entries[j].Token < e.Token {
			j++
		}
		if j == len(old.Entries) || old.Entries[j] != e {
			marks[i], anyEntry = true, true
		}
	}
	votes = !slices.Equal(r.Votes, old.Votes) || !slices.EqualFunc(r.Transfers, old.Transfers, sameTransferState)
	if r.Used && !old.Used && !anyEntry && len(marks) > 0 {
		marks[0], anyEntry = true, true
	}
	return marks, anyEntry, votes
}

// newsFor marks the entries of ours that part p asked about (its covered
// spans and its bounds) and holds older or lacks, and reports whether our
// votes or transfers are news to a part that carried the sender's.
func newsFor(ours *Ring, p *RingPart) (marks []bool, anyEntry, votes bool) {
	theirs := p.Ring
	newer := func(e Entry) bool {
		k := theirs.find(e.Token)
		return k < 0 || theirs.Entries[k].Token != e.Token || entryLess(theirs.Entries[k], e)
	}
	for _, s := range p.cover {
		for i := max(ours.find(s.First), 0); i < len(ours.Entries) && ours.Entries[i].Token <= s.Last; i++ {
			e := ours.Entries[i]
			if e.Token < s.First {
				continue
			}
			if newer(e) {
				if marks == nil {
					marks = make([]bool, len(ours.Entries))
				}
				marks[i], anyEntry = true, true
			}
		}
	}
	for k, e := range theirs.Entries {
		if !p.Bound[k] {
			continue
		}
		i := ours.find(e.Token)
		if i >= 0 && ours.Entries[i].Token == e.Token && entryLess(e, ours.Entries[i]) {
			if marks == nil {
				marks = make([]bool, len(ours.Entries))
			}
			marks[i], anyEntry = true, true
		}
	}
	if ours.Used && !theirs.Used && !anyEntry && len(ours.Entries) > 0 {
		marks = make([]bool, len(ours.Entries))
		marks[0], anyEntry = true, true
	}
	if p.carriesVotes() {
		votes = votesNewsFor(ours, theirs, p.Whole())
	}
	return marks, anyEntry, votes
}

// votesNewsFor reports whether ours holds votes, transfer states or
// certificate votes that theirs (a whole ring, or one of the parts
// votesParts cut) lacks or holds older. A part speaks only for the span
// of votes, transfers and certificate voters it holds: what lies outside
// is in the sender's other parts, so it is no news to them.
func votesNewsFor(ours, theirs *Ring, whole bool) bool {
	vs, ts := theirs.Votes, theirs.Transfers
	for _, v := range ours.Votes {
		if !whole && (len(vs) == 0 || cmpVote(v, vs[0]) < 0 || cmpVote(v, vs[len(vs)-1]) > 0) {
			continue
		}
		if w, ok := theirs.vote(v.Voter, v.Dead); !ok || voteLess(w, v) {
			return true
		}
	}
	for _, t := range ours.Transfers {
		if !whole && (len(ts) == 0 || cmpTransfer(t, ts[0]) < 0 || cmpTransfer(t, ts[len(ts)-1]) > 0) {
			continue
		}
		k, found := theirs.transferIndex(t.Dead, t.Issuer)
		if !found || transferLess(theirs.Transfers[k], t) {
			return true
		}
		c := theirs.Transfers[k].Cert
		for _, x := range t.Cert {
			if !whole && (len(c) == 0 || x.Voter.Less(c[0].Voter) || c[len(c)-1].Voter.Less(x.Voter)) {
				continue
			}
			if certAdds(c, []CertVote{x}) {
				return true
			}
		}
	}
	return false
}

// changedVotes returns, in a ring holding only them, r's votes and
// transfers that differ from votes and transfers (as last broadcast): a
// change's broadcast carries those, not the whole table (a thousand votes
// on a pending rmpeer at 1,000 owners, each broadcast by its voter).
func changedVotes(r *Ring, votes []Vote, transfers []Transfer) *Ring {
	out := &Ring{Range: r.Range, Seed: r.Seed, Used: r.Used}
	for _, v := range r.Votes {
		k, found := slices.BinarySearchFunc(votes, v, cmpVote)
		if !found || votes[k] != v {
			out.Votes = append(out.Votes, v)
		}
	}
	for _, t := range r.Transfers {
		k, found := slices.BinarySearchFunc(transfers, t, cmpTransfer)
		if !found || !sameTransferState(transfers[k], t) {
			out.Transfers = append(out.Transfers, t)
		}
	}
	return out
}

// addCover adds spans to a sorted list of disjoint spans, coalescing.
func addCover(cover, add []Span) []Span {
	cover = append(cover, add...)
	slices.SortFunc(cover, func(x, y Span) int {
		switch {
		case x.First < y.First:
			return -1
		case x.First > y.First:
			return 1
		}
		return 0
	})
	out := cover[:0]
	for _, s := range cover {
		if n := len(out); n > 0 && uint64(s.First) <= uint64(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, s.Last)
			continue
		}
		out = append(out, s)
	}
	return out
}

// cloneTransfers copies transfers and their certificates.
func cloneTransfers(ts []Transfer) []Transfer {
	out := slices.Clone(ts)
	for i := range out {
		out[i].Cert = slices.Clone(out[i].Cert)
	}
	return out
}
