package ipam

import (
	"fmt"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Messages: ring gossip in and out, and space requests from other peers
// (the donor's side of a grant).

// HandleMessage processes one message from peer from. A malformed message
// or one from another network returns an error (and is counted); it never
// panics.
func (a *Allocator) HandleMessage(from key.Public, msg []byte) error {
	m, err := ParseMessage(msg)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if err != nil {
		a.count("ipam_message_malformed")
		if len(msg) > 0 && msg[0] != WireVersion {
			// A rolling upgrade (legacy.go): say so once per peer.
			a.count("ipam_message_other_version")
			if !a.versionWarned[from] {
				if len(a.versionWarned) >= MaxPeers {
					clear(a.versionWarned)
				}
				a.versionWarned[from] = true
				a.log.Warn("a peer sends address-ring messages of another wire version; nothing passes between the two until both run the same version (upgrade it)",
					"peer", from.Name(), "theirs", msg[0], "ours", WireVersion)
			}
		}
		a.mu.Unlock()
		return err
	}
	var o outbox
	switch {
	case m.Ring != nil:
		o, err = a.handleRingLocked(from, wholePart(m.Ring))
	case m.Part != nil:
		o, err = a.handleRingLocked(from, m.Part)
	case m.Request != nil:
		o, err = a.handleRequestLocked(from, *m.Request)
	case m.RequestIn != nil:
		o, err = a.handleRequestInLocked(from, *m.RequestIn)
	case m.Digest != nil:
		o = a.handleDigestLocked(from, m.Digest)
		a.digestAnsweredLocked(from)
	}
	a.mu.Unlock()
	a.flush(o)
	return err
}

func (a *Allocator) handleRingLocked(from key.Public, p *RingPart) (outbox, error) {
	in := p.Ring
	a.count("ipam_ring_received")
	if err := in.checkVersions(); err != nil {
		a.count("ipam_ring_refused_versions")
		a.log.Warn("ring refused", "peer", from.Name(), "err", err)
		return outbox{}, err
	}
	var next *Ring
	var undo *mergeUndo // a merge into our ring in place (undo.go)
	var changed, adopted bool
	var err error
	refused := 0
	switch {
	case in.Range != a.ring.Range:
		err = fmt.Errorf("%w: ours %v, theirs %v", ErrRangeMismatch, a.ring.Range, in.Range)
	case !in.Seeded():
	case !a.ring.Seeded():
		next = a.ring.Clone()
		changed, err = a.adoptPartLocked(next, p)
		adopted = true
	case a.ring.Seed != in.Seed:
		switch a.meetLocked(in) {
		case weGiveWay:
			// Once the other network's ring is whole here (its parts
			// cover the range), or at once if we come back to it.
			next, changed, err = a.giveWayLocked(p, from)
			adopted = changed
		case theyGiveWay:
			// Not an error: its peers come to our network.
			return a.answerLoserLocked(from), nil
		default:
			err = &SeedMismatchError{Ours: a.ring.Seed, Theirs: in.Seed}
		}
	case !a.mayChangeLocked(p):
		// Nothing newer than ours: skip the merge (most messages, at scale).
	default:
		next, undo = a.ring, &mergeUndo{}
		changed, refused = a.mergeCheckedLocked(next, in, from, p.Bound, undo)
		if a.retryHeldLocked(next, undo) {
			changed = true
		}
	}
	if err == nil && changed {
		// The union of two rings within the bounds may exceed them (peer
		// table, inline certificate signatures), and a ring that does not
		// encode could be neither saved nor sent: refuse the message.
		if encErr := next.checkBounds(); encErr == nil {
			_, encErr = appendVotesTransfers(nil, next, map[key.Public]uint16{}, ringTables.certSigs)
			if encErr != nil {
				err = encErr
			}
		} else {
			err = encErr
		}
		if err != nil {
			if undo != nil {
				undo.undo(next)
			}
			a.count("ipam_ring_full")
			a.log.Warn("ring refused: merged with ours it would exceed the ring's size bounds", "peer", from.Name(), "err", err)
			return outbox{}, nil
		}
	}
	if err != nil {
		a.count("ipam_ring_refused")
		if a.lastErr == nil || a.lastErr.Error() != err.Error() {
			a.log.Warn("ring refused", "peer", from.Name(), "err", err)
		}
		a.lastErr = err
		return outbox{}, err
	}
	var o outbox
	if changed {
		if p.Relay && !adopted {
			// A relay part (from a new control neighbour) is news to our
			// side of the mesh: what it changed goes out with our own
			// changes. Otherwise the sender told everyone (a broadcast),
			// or we are joining: only what we add ourselves goes out.
			var anyEntry bool
			if undo != nil {
				a.relayNews, anyEntry, a.relayVotes = undo.marks(next)
			} else {
				a.relayNews, anyEntry, a.relayVotes = changedSince(next, a.ring)
			}
			if !anyEntry {
				a.relayNews = nil
			}
		}
		a.ring = next
		a.votesBefore, a.transfersBefore = slices.Clone(next.Votes), cloneTransfers(next.Transfers)
		a.merging = true
		o, err = a.ringChangedLocked()
		a.merging = false
		if err != nil {
			return outbox{}, err
		}
	}
	// Tell the sender what it lacks of what it sent, when it asks
	// (answers.go): not for a change it broadcast. When we refused part
	// of its ring it may refuse part of ours too, so answer such a peer
	// at most once a second rather than bounce forever.
	if a.ring.Seeded() && a.ring.Seed == in.Seed && wantsAnswer(p) {
		marks, anyEntry, votes := newsFor(a.ring, p)
		now := a.now()
		if (anyEntry || votes) && (refused == 0 || now.Sub(a.lastReply[from]) >= time.Second) {
			if refused > 0 {
				if len(a.lastReply) >= MaxPeers {
					clear(a.lastReply)
				}
				a.lastReply[from] = now
			}
			if marks == nil {
				marks = make([]bool, len(a.ring.Entries))
			}
			if msgs, err := ringParts(a.ring, marks, votes, p.Relay); err == nil {
				o.replyTo, o.reply = from, msgs
			}
		}
	}
	if a.wantSpace {
		if len(a.ownSpans()) > 0 {
			if _, ok := a.findFreeLocked(); ok {
				a.wantSpace, a.reqDonor, a.silent = false, key.Public{}, nil
			}
		}
		if a.wantSpace && a.reqDonor.IsZero() {
			r := a.requestSpaceLocked(false)
			if r.send != nil && o.send == nil {
				o.request(r)
			}
		}
	}
	return o, nil
}

// mayChangeLocked reports whether part p holds anything newer than our
// ring: a new token or a later state, a vote, a transfer state, the Used
// flag. It costs a lookup per item, where a merge costs a copy of the
// ring. (Held states wait for a merge that brings something new.)
func (a *Allocator) mayChangeLocked(p *RingPart) bool {
	r, in := a.ring, p.Ring
	if in.Used && !r.Used {
		return true
	}
	for _, e := range in.Entries {
		j := r.find(e.Token)
		if j < 0 || r.Entries[j].Token != e.Token || entryLess(r.Entries[j], e) {
			return true
		}
	}
	for _, v := range in.Votes {
		if r.forgotten(v.Dead, false) {
			continue
		}
		if w, ok := r.vote(v.Voter, v.Dead); !ok || voteLess(w, v) {
			return true
		}
	}
	for _, t := range in.Transfers {
		if r.forgotten(t.Dead, t.Done) {
			continue
		}
		k, found := r.transferIndex(t.Dead, t.Issuer)
		if !found || transferLess(r.Transfers[k], t) || certAdds(r.Transfers[k].Cert, t.Cert) {
			return true
		}
	}
	return false
}

// adoptPartLocked takes a ring into the unseeded ring next: a whole one at
// once (adoptLocked), a part into the ring being put together, adopted
// once the parts cover the range.
func (a *Allocator) adoptPartLocked(next *Ring, p *RingPart) (bool, error) {
	if p.Whole() {
		a.asm, a.asmCover, a.asmEnds = nil, nil, nil
		return a.adoptLocked(next, p.Ring)
	}
	whole, err := a.assembleLocked(p)
	if err != nil || whole == nil {
		return false, err
	}
	return a.adoptLocked(next, whole)
}

// assembleLocked adds part p (its signatures checked) to the ring being
// put together, and returns that ring once its parts cover the range.
// Parts of another network than the one being assembled start over.
func (a *Allocator) assembleLocked(p *RingPart) (*Ring, error) {
	if err := a.verifyAllLocked(p.Ring); err != nil {
		return nil, err
	}
	if a.asm == nil || a.asm.Seed != p.Ring.Seed {
		a.asm, a.asmCover, a.asmEnds = &Ring{Range: a.ring.Range}, nil, map[uint32]asmEnd{}
	}
	sub := p.Ring.Clone()
	sub.Entries = sub.Entries[:0]
	for i, e := range p.Ring.Entries {
		if p.Bound[i] {
			continue
		}
		sub.Entries = append(sub.Entries, e)
		end := a.asmEnds[e.Token]
		if i+1 == len(p.Ring.Entries) {
			end.last = true // a run that reaches the ring's last token
		} else if t := p.Ring.Entries[i+1].Token; !slices.Contains(end.ends, t) && len(end.ends) < maxAsmEnds {
			end.ends = append(end.ends, t)
		}
		a.asmEnds[e.Token] = end
	}
	if _, err := a.asm.Merge(sub); err != nil {
		a.asm, a.asmCover, a.asmEnds = nil, nil, nil
		return nil, err
	}
	if len(a.asm.Entries) > MaxEntries || a.asm.checkCounts() != nil {
		a.asm, a.asmCover, a.asmEnds = nil, nil, nil
		a.count("ipam_ring_full")
		return nil, ErrRingFull
	}
	a.asmCover = addCover(a.asmCover, p.cover)
	a.assembledAt = a.now()
	a.count("ipam_ring_part_assembled")
	if len(a.asmCover) != 1 || a.asmCover[0] != a.span {
		return nil, nil
	}
	whole, ends := a.asm, a.asmEnds
	a.asm, a.asmCover, a.asmEnds = nil, nil, nil
	if n := dropUnbounded(whole, ends); n > 0 {
		a.counters["ipam_ring_part_unbounded_dropped"] += uint64(n)
	}
	if err := whole.Validate(); err != nil {
		return nil, fmt.Errorf("%w: ring put together from parts: %v", ErrMalformed, err)
	}
	return whole, nil
}

// A ring put together from parts of different moments (issue 18). A
// joiner's parts come from whoever sends them: a neighbour's ring in
// parts, and the changes peers broadcast meanwhile, each part covering
// its own stretch. A change's part holds a grant with its end (the
// bound), but a bound is not put in (it says where a span ends, not that
// the token exists here), so the grant went in, and when the part that
// covered the end's place was older than the end (the granter's grant
// just before, to another peer) the ring was adopted without it: the
// new grantee's span reached over the other one's (simulated, 150 peers
// in batches of 50: several joiners in every first batch traced). That
// joiner then refused the other grantee's states for lack of
// authority, and passed the ring on in its own parts, where the end a
// receiver checks is the joiner's next token: a peer that took it and
// was the other grantee refused its own grant from its granter (not the
// owner there in its ring) and from everyone else (grantFromGranter),
// forever (TestJoinInBatchesLate with control neighbours: 2 of 50 runs,
// a first batch's grantee lacking its grant after 60 s). A merge takes a
// new token only with the token after it (entryPassLocked); so does the
// ring put together now: a token whose parts all had a next token that
// the ring lacks is dropped before the ring is adopted, and its span goes
// to the entry before it, as it was before that grant (gossip then brings
// the grant with its end, checked as any merge).

// asmEnd is what followed a token in the parts that brought it: the next
// tokens (its span's end, in each sender's ring), or last when a part
// brought it as the ring's last token.
type asmEnd struct {
	ends []uint32
	last bool
}

// maxAsmEnds bounds the next tokens kept per token (parts of a few
// moments; more is a peer resending).
const maxAsmEnds = 4

// dropUnbounded removes from r, put together from parts, every token but
// the first whose parts all ended its span at a token r lacks, and
// returns how many it removed.
func dropUnbounded(r *Ring, ends map[uint32]asmEnd) int {
	has := func(t uint32) bool {
		k := r.find(t)
		return k >= 0 && r.Entries[k].Token == t
	}
	n := 0
	// From the last token down: the ends of a token lie above it, where
	// every token is decided already.
	for i := len(r.Entries) - 1; i > 0; i-- {
		end, ok := ends[r.Entries[i].Token]
		if !ok || end.last || slices.ContainsFunc(end.ends, has) {
			continue
		}
		r.Entries = slices.Delete(r.Entries, i, i+1)
		n++
	}
	if n > 0 {
		r.dropDerived()
	}
	return n
}

func (a *Allocator) handleRequestLocked(from key.Public, s Seed) (outbox, error) {
	a.count("ipam_request_received")
	if s != a.ring.Seed {
		a.count("ipam_request_refused")
		return outbox{}, fmt.Errorf("%w: from %s for network %v, ours is %v", ErrOtherNetwork, from.Name(), s, a.ring.Seed)
	}
	if from == a.self {
		return outbox{}, nil
	}
	if a.grantUntakenLocked(from) {
		// A donor already granted the requester space it has not taken
		// yet (its answer was lost, or is late: the requester timed out
		// and asked again, or asked us). Granting again took twice the
		// space (610 grants for 200 simulated joiners, batch 50): send
		// our ring, which holds that grant, instead.
		a.count("ipam_request_grant_resent")
		msgs, err := a.grantAnswerLocked(from, nil)
		if err != nil {
			return outbox{}, nil
		}
		return outbox{replyTo: from, reply: msgs}, nil
	}
	g, ok := a.pickGrantLocked()
	if !ok {
		a.count("ipam_request_declined")
		return outbox{}, nil
	}
	if err := a.ring.Grant(a.self, from, g); err != nil {
		a.count("ipam_request_declined")
		return outbox{}, nil
	}
	a.count("ipam_grant")
	a.log.Info("granted address space", "span", g.String(), "peer", from.Name())
	o, err := a.ringChangedLocked()
	o.replyTo, o.reply = from, o.broadcast
	if msgs, perr := a.grantAnswerLocked(from, o.broadcast); perr == nil {
		o.reply = msgs
	}
	return o, err
}

// grantUntakenLocked reports whether p owns an entry still in the state
// its granter wrote (p publishes its own state once it takes a grant).
func (a *Allocator) grantUntakenLocked(p key.Public) bool {
	for _, e := range a.ring.Entries {
		if e.Owner == p && e.Writer != p && a.ring.heir(p) == p {
			return true
		}
	}
	return false
}

// pickGrantLocked chooses what to give: the upper half of our largest
// aligned free block (a single address only if we keep one too).
func (a *Allocator) pickGrantLocked() (Span, bool) { return a.pickGrantWithinLocked(a.span) }

// pickGrantWithinLocked is pickGrantLocked for our space inside within.
func (a *Allocator) pickGrantWithinLocked(within Span) (Span, bool) {
	_, spans := a.ownEntries()
	spans = clipSpans(spans, within)
	// Reserved addresses do not count as used: every peer refuses to hand
	// them out, so a block may contain them and stay aligned.
	used := a.usedSorted()
	var best Span
	var bestSize, totalFree uint64
	for _, s := range spans {
		lo := uint64(s.First)
		i, _ := slices.BinarySearch(used, s.First)
		for ; lo <= uint64(s.Last); i++ {
			hi := uint64(s.Last) + 1
			if i < len(used) && uint64(used[i]) < hi {
				hi = uint64(used[i])
			}
			if hi > lo {
				run := Span{uint32(lo), uint32(hi - 1)}
				totalFree += run.Size()
				if b := run.largestBlock(); b.Size() > bestSize {
					best, bestSize = b, b.Size()
				}
			}
			lo = hi + 1
			if i >= len(used) {
				break
			}
		}
	}
	switch {
	case bestSize >= 2:
		half := uint32(bestSize / 2)
		return Span{best.First + half, best.Last}, true
	case bestSize == 1 && totalFree >= 2:
		return best, true
	}
	return Span{}, false
}

// Gossip broadcasts the whole ring, in parts (the daemon calls it when
// asked to repair; anti-entropy and new neighbours use SendRing).
func (a *Allocator) Gossip() {
	a.mu.Lock()
	if !a.ring.Seeded() {
		a.mu.Unlock()
		return
	}
	msgs, err := ringParts(a.ring, nil, true, false)
	a.mu.Unlock()
	if err != nil {
		a.log.Error("encoding the ring", "err", err)
		return
	}
	a.flush(outbox{broadcast: msgs})
}

// SendRing sends the whole ring, in parts, to one peer; with relay set it
// broadcasts what it learns. A ring that fits one part is answered with
// what we lack. A new control neighbour gets a relay digest instead
// (NewNeighbour), and anti-entropy a digest (SendDigest).
func (a *Allocator) SendRing(to key.Public, relay bool) {
	a.mu.Lock()
	if !a.ring.Seeded() || a.closed {
		a.mu.Unlock()
		return
	}
	msgs, err := ringParts(a.ring, nil, true, relay)
	a.mu.Unlock()
	if err != nil {
		a.log.Error("encoding the ring", "err", err)
		return
	}
	a.flush(outbox{replyTo: to, reply: msgs})
}

// MaxSendOwnArrivals bounds the peers a caller sends its own entries to
// (SendOwn) when they become reachable at once: more arrive together when
// we joined or a partition healed, and there the control neighbours'
// relayed rings bring the news (each peer sending every arrival its
// entries would cost O(N²) messages per heal).
const MaxSendOwnArrivals = 16

// SendOwn sends the entries this peer owns (with their bounds) to one
// peer: one that has just become reachable to us, and so missed the
// broadcasts of our changes made before (a broadcast goes to the peers
// reachable at the time: a joiner's donor published its new free count
// while the joiner was not yet reachable to it, and the joiner waited for
// anti-entropy, 10 s). It is not answered (answers.go). Each peer sends an arrival a message of its own few entries: O(N) small
// messages per join, where the whole ring from each would be O(N²) bytes.
func (a *Allocator) SendOwn(to key.Public) {
	a.mu.Lock()
	if !a.ring.Seeded() || a.closed {
		a.mu.Unlock()
		return
	}
	// Our entries from the own index (own.go), not a pass over the ring:
	// those we own by name (not yet written inherited ones: their
	// states are the dead peer's).
	var sel []int
	for _, t := range a.ring.ownTokens(a.self) {
		if i := a.ring.find(t); a.ring.Entries[i].Owner == a.self {
			sel = append(sel, i)
		}
	}
	if len(sel) == 0 {
		a.mu.Unlock()
		return
	}
	msgs, err := ringPartsSel(a.ring, sel, nil, false)
	a.mu.Unlock()
	if err != nil {
		a.log.Error("encoding the ring", "err", err)
		return
	}
	a.flush(outbox{replyTo: to, reply: msgs})
}

// RingMessage returns the whole ring as one msgRing message (nil before
// seeding): for comparing rings, and for sending only while it is within
// MaxMessage (SendRing sends any ring).
func (a *Allocator) RingMessage() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ring.Seeded() {
		return nil
	}
	msg, _ := AppendRingMessage(nil, a.ring)
	return msg
}
