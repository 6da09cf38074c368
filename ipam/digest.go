package ipam

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Ring digests (anti-entropy, issue 18). Every 10 s each peer checks its
// ring against one random peer's. Sending the whole ring for that cost
// O(N) bytes per peer per round (80 KB at 1,000 owners), although the
// rings almost always agree. So the round sends a digest instead: the
// range, the seed and a hash of each of digestBuckets equal stretches of
// the range (the entries whose token lies there), and one of the votes
// and transfers. The receiver answers only where its own differ: with
// the ring parts of those stretches (each from the entry that holds the
// stretch's start to the stretch's end, with its bound) and its votes,
// and the digest's sender merges them and answers in turn with what the
// receiver lacks of what it sent (handleRingLocked's answer), so one round
// trip and a half repairs both sides, as the whole ring did. Rings that
// agree cost one digest; rings of another network or range are answered
// with the whole ring (the sender meets it, giveway.go, or adopts it if it
// has none yet). A receiver that
// must send votes and holds none answers with a digest of its own, marked
// as an answer (never answered with a digest).
//
// msgRingDigest body:
//
//	+---------------------------------------------------------------+
//	| range addr 4 | bits 1 | seed peer 32 | seed id 8 | flags 1     |
//	|   flags: bit 0 used, bit 1 answer, bit 2 relay; other bits    |
//	|   must be zero                                                |
//	| digestBuckets × bucket hash 8 | votes and transfers hash 8    |
//	+---------------------------------------------------------------+
//
// A hash is the first 8 bytes of SHA-256 over the items' fields in ring
// order. Peers that do not know the type (wire version 4 before digests)
// count it as malformed and answer nothing: anti-entropy then runs only
// from them (their whole ring) to the peers that know it.

const (
	msgRingDigest byte = 5
	// digestBuckets is the stretches of the range a digest hashes apart:
	// at 1,000 owners a differing stretch costs about 16 entries.
	digestBuckets    = 64
	digestFlagAnswer = 2
	digestFlagRelay  = 4
	digestLen        = 4 + 1 + key.Len + 8 + 1 + 8*digestBuckets + 8
)

// ringDigest is a decoded digest.
type ringDigest struct {
	Range   netip.Prefix
	Seed    Seed
	Used    bool
	Answer  bool
	Relay   bool // from a new control neighbour: answer with relay parts
	Buckets [digestBuckets]uint64
	Votes   uint64
}

// bucketOf returns the stretch of r's range token t lies in.
func bucketOf(r *Ring, t uint32) int {
	s := r.span()
	return int((uint64(t-s.First) * digestBuckets) / s.Size())
}

// bucketStart returns the first address of stretch k of r's range.
func bucketStart(r *Ring, k int) uint32 {
	s := r.span()
	return s.First + uint32((uint64(k)*s.Size()+digestBuckets-1)/digestBuckets)
}

func sum8(h hash.Hash) uint64 {
	var b [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(b[:0]))
}

// digestOf hashes r (seeded), every stretch from scratch (Ring.digest
// keeps them).
func digestOf(r *Ring) ringDigest {
	d := ringDigest{Range: r.Range, Seed: r.Seed, Used: r.Used}
	h := sha256.New()
	var buf []byte
	for i := 0; i < len(r.Entries); {
		k := bucketOf(r, r.Entries[i].Token)
		d.Buckets[k], i, buf = hashStretch(h, r, i, k, buf)
	}
	d.Votes = hashVotes(h, r, buf)
	return d
}

// hashStretch hashes the entries of r from index i whose tokens lie in
// stretch k, and returns the hash and the index after them.
func hashStretch(h hash.Hash, r *Ring, i, k int, buf []byte) (uint64, int, []byte) {
	h.Reset()
	for ; i < len(r.Entries) && bucketOf(r, r.Entries[i].Token) == k; i++ {
		e := &r.Entries[i]
		buf = binary.BigEndian.AppendUint32(buf[:0], e.Token)
		buf = append(buf, e.Owner[:]...)
		buf = binary.BigEndian.AppendUint32(buf, e.Version)
		buf = binary.BigEndian.AppendUint32(buf, e.Free)
		buf = append(buf, e.Writer[:]...)
		buf = append(buf, e.Sig[:]...)
		h.Write(buf)
	}
	return sum8(h), i, buf
}

// hashVotes hashes r's votes and transfers.
func hashVotes(h hash.Hash, r *Ring, buf []byte) uint64 {
	h.Reset()
	for _, v := range r.Votes {
		buf = append(buf[:0], v.Voter[:]...)
		buf = append(buf, v.Dead[:]...)
		buf = binary.BigEndian.AppendUint32(buf, v.Seq)
		buf = append(buf, v.Issuer[:]...)
		buf = append(buf, v.Sig[:]...)
		h.Write(buf)
	}
	for _, t := range r.Transfers {
		buf = append(buf[:0], 't')
		buf = append(buf, t.Dead[:]...)
		buf = append(buf, t.Issuer[:]...)
		var fl byte
		if t.Done {
			fl |= flagDone
		}
		if t.Withdrawn {
			fl |= flagWithdrawn
		}
		buf = append(buf, fl)
		buf = append(buf, t.Sig[:]...)
		for _, c := range t.Cert {
			buf = append(buf, c.Voter[:]...)
			buf = binary.BigEndian.AppendUint32(buf, c.Seq)
			buf = append(buf, c.Sig[:]...)
		}
		h.Write(buf)
	}
	return sum8(h)
}

// Stretch hashes kept (issue 18). Hashing the whole ring after each
// change cost 110 µs at 1,000 owners (BenchmarkChangeThenDigest), and
// with quick rounds each peer makes a digest after each change it takes
// (and answers others' digests, made after theirs): about 0.2 of a core
// for a simulated mesh of 1,000 in a burst of joins, where a change
// touches one or two stretches. So the ring keeps each stretch's hash,
// and every change of an entry marks its stretch (noteEntry: the Ring
// methods and the merge's record, as the own index is kept, own.go);
// what changes entries wholesale drops them (dropDerived). A digest
// hashes again only the marked stretches. The votes and transfers are
// hashed each time (few: only pending rmpeers' votes are kept).

// stretchHashes is the hash of each of a ring's stretches, and which
// changed since (bit k of dirty: stretch k).
type stretchHashes struct {
	hash  [digestBuckets]uint64
	dirty uint64
}

var _ = [1]struct{}{}[digestBuckets-64] // dirty has a bit per stretch

// noteEntry marks the stretch of token t changed.
func (r *Ring) noteEntry(t uint32) {
	if r.dig != nil {
		r.dig.dirty |= 1 << bucketOf(r, t)
	}
}

// digest returns r's digest, hashing only the stretches changed since
// the last (digestOf, kept).
func (r *Ring) digest() ringDigest {
	if r.dig == nil {
		r.dig = &stretchHashes{dirty: ^uint64(0)}
	}
	h := sha256.New()
	var buf []byte
	for k := 0; r.dig.dirty != 0 && k < digestBuckets; k++ {
		if r.dig.dirty&(1<<k) == 0 {
			continue
		}
		r.dig.dirty &^= 1 << k
		i, _ := slices.BinarySearchFunc(r.Entries, bucketStart(r, k), func(e Entry, t uint32) int { return cmp.Compare(e.Token, t) })
		if i == len(r.Entries) || bucketOf(r, r.Entries[i].Token) != k {
			r.dig.hash[k] = 0 // no token in the stretch
			continue
		}
		r.dig.hash[k], _, buf = hashStretch(h, r, i, k, buf)
	}
	return ringDigest{Range: r.Range, Seed: r.Seed, Used: r.Used, Buckets: r.dig.hash, Votes: hashVotes(h, r, buf)}
}

// AppendDigestMessage appends d as a message.
func appendDigestMessage(b []byte, d *ringDigest) []byte {
	b = append(b, WireVersion, msgRingDigest)
	a4 := d.Range.Addr().As4()
	b = append(b, a4[:]...)
	b = append(b, byte(d.Range.Bits()))
	b = append(b, d.Seed.Peer[:]...)
	b = binary.BigEndian.AppendUint64(b, d.Seed.ID)
	var flags byte
	if d.Used {
		flags |= ringFlagUsed
	}
	if d.Answer {
		flags |= digestFlagAnswer
	}
	if d.Relay {
		flags |= digestFlagRelay
	}
	b = append(b, flags)
	for _, h := range d.Buckets {
		b = binary.BigEndian.AppendUint64(b, h)
	}
	return binary.BigEndian.AppendUint64(b, d.Votes)
}

// parseDigest decodes a digest body. It never panics.
func parseDigest(b []byte) (*ringDigest, error) {
	if len(b) != digestLen {
		return nil, fmt.Errorf("%w: digest of %d bytes", ErrMalformed, len(b))
	}
	d := &ringDigest{}
	pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte(b[:4])), int(b[4]))
	if !validRange(pfx) || pfx.Masked() != pfx {
		return nil, fmt.Errorf("%w: digest of a bad range", ErrMalformed)
	}
	d.Range = pfx
	b = b[5:]
	d.Seed.Peer = key.Public(b[:key.Len])
	d.Seed.ID = binary.BigEndian.Uint64(b[key.Len:])
	if (d.Seed.ID == 0) != d.Seed.Peer.IsZero() {
		return nil, fmt.Errorf("%w: digest with half a seed", ErrMalformed)
	}
	b = b[key.Len+8:]
	if b[0]&^(ringFlagUsed|digestFlagAnswer|digestFlagRelay) != 0 {
		return nil, fmt.Errorf("%w: unknown digest flags %#x", ErrMalformed, b[0])
	}
	d.Used, d.Answer, d.Relay = b[0]&ringFlagUsed != 0, b[0]&digestFlagAnswer != 0, b[0]&digestFlagRelay != 0
	if d.Relay && d.Seed.IsZero() {
		return nil, fmt.Errorf("%w: a relay digest of no network", ErrMalformed)
	}
	b = b[1:]
	for k := range d.Buckets {
		d.Buckets[k] = binary.BigEndian.Uint64(b[8*k:])
	}
	d.Votes = binary.BigEndian.Uint64(b[8*digestBuckets:])
	return d, nil
}

// digestLocked returns the ring's digest, kept until the ring changes
// (ringChangedLocked drops it): each peer makes one every 10 s and
// answers about one, and one per new control neighbour and quick round,
// for rings that mostly did not change. After a change only the changed
// stretches are hashed again (Ring.digest).
func (a *Allocator) digestLocked() ringDigest {
	if a.digest == nil {
		d := a.ring.digest()
		a.digest = &d
	}
	if checkDerived && *a.digest != digestOf(a.ring) {
		panic("ipam: kept digest differs from the ring's")
	}
	return *a.digest
}

// SendDigest sends a digest of the ring to one peer (anti-entropy: a
// random peer every 10 s), which answers with the parts of its ring that
// differ, if any. A peer with no ring yet sends a digest of no network,
// answered with the whole ring: a joiner whose control neighbours' rings
// were lost on the way gets one this way.
func (a *Allocator) SendDigest(to key.Public) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	d := a.digestLocked()
	a.count("ipam_digest_sent")
	a.mu.Unlock()
	a.flush(outbox{replyTo: to, reply: [][]byte{appendDigestMessage(nil, &d)}})
}

// handleDigestLocked answers a digest with what differs from our ring.
func (a *Allocator) handleDigestLocked(from key.Public, d *ringDigest) outbox {
	a.count("ipam_digest_received")
	if from == a.self {
		return outbox{}
	}
	if !a.ring.Seeded() {
		// A joiner. A new neighbour's relay digest is answered with
		// ours, of no network, which the neighbour answers with its
		// ring: at most one such ask a second (NewNeighbour).
		if !d.Relay || d.Seed.IsZero() {
			return outbox{}
		}
		now := a.now()
		if !a.askedRingAt.IsZero() && now.Sub(a.askedRingAt) < time.Second {
			a.count("ipam_neighbour_digest_skipped")
			return outbox{}
		}
		a.askedRingAt = now
		a.count("ipam_neighbour_digest_sent")
		mine := a.digestLocked()
		return outbox{replyTo: from, reply: [][]byte{appendDigestMessage(nil, &mine)}}
	}
	if d.Range != a.ring.Range || d.Seed != a.ring.Seed {
		// Another network (or range): the sender meets ours.
		msgs, err := ringParts(a.ring, nil, true, false)
		if err != nil {
			return outbox{}
		}
		a.count("ipam_digest_differed")
		return outbox{replyTo: from, reply: msgs}
	}
	ours := a.digestLocked()
	var marks []bool // made only when a stretch differs: agreeing rings cost no pass
	anyEntry := false
	for k := range ours.Buckets {
		if ours.Buckets[k] == d.Buckets[k] {
			continue
		}
		if marks == nil {
			marks = make([]bool, len(a.ring.Entries))
		}
		// From the entry that holds the stretch's start (its span may
		// begin in an earlier stretch) to the stretch's end, so the
		// parts' runs cover the whole stretch.
		for i := max(a.ring.find(bucketStart(a.ring, k)), 0); i < len(a.ring.Entries) && bucketOf(a.ring, a.ring.Entries[i].Token) <= k; i++ {
			marks[i], anyEntry = true, true
		}
	}
	if ours.Used != d.Used && !anyEntry {
		marks = make([]bool, len(a.ring.Entries))
		marks[0], anyEntry = true, true // the flag travels with any part
	}
	votes := ours.Votes != d.Votes
	if !anyEntry && !votes {
		a.count("ipam_digest_matched")
		return outbox{}
	}
	a.count("ipam_digest_differed")
	var o outbox
	if votes && len(a.ring.Votes)+len(a.ring.Transfers) == 0 {
		// We have none to send: our digest makes the sender send its.
		if !d.Answer {
			mine := ours
			mine.Answer, mine.Relay = true, d.Relay
			o.replyTo, o.reply = from, append(o.reply, appendDigestMessage(nil, &mine))
		}
		votes = false
	}
	if anyEntry || votes {
		if marks == nil {
			marks = []bool{} // votes alone: no entry (nil would send every one)
		}
		msgs, err := ringParts(a.ring, marks, votes, d.Relay)
		if err != nil {
			return outbox{}
		}
		o.replyTo, o.reply = from, append(o.reply, askParts(msgs)...)
	}
	return o
}

// A new control neighbour (issue 18). Both ends of a new control
// connection used to send each other their whole ring with relay set, so
// that when a partition heals each side floods the other's news. At 1,000
// owners a ring is about 190 KB, and one join moves tens of connections
// (the joiner's dials, and the connections they displace), so a join cost
// the mesh about 20 MB of rings that almost always agreed. Now each end
// sends a digest with relay set (Allocator.NewNeighbour): the receiver
// answers only the stretches that differ, as relay asks, the digest's
// sender merges them (broadcasting what is news to its side, as a relay
// part always did) and answers with what the receiver lacks of them, with
// relay set too. Rings that agree cost two digests (1 KB). A peer with no
// ring sends a digest of no network, answered with the whole ring (its
// first ring, trusted: authority.go).
//
// Older version-4 peers (digests without the relay flag) count a relay
// digest as malformed and answer nothing; they still send their whole
// ring to a new neighbour, which a newer peer merges and relays. What the
// newer peer knows reaches them only by broadcasts and anti-entropy (10 s
// rounds): upgrade every peer.

// NewNeighbour starts the exchange with a new control neighbour: a digest
// with relay set, or with no ring yet a digest of no network (answered
// with the whole ring), at most one a second: a joiner's control
// connections come up together, and each answered with the whole ring
// (simulated N=300: 159 parts, 50 rings, for the 300th joiner). If that
// ring is lost, the next arrival or the next anti-entropy round asks
// again.
func (a *Allocator) NewNeighbour(to key.Public) {
	a.mu.Lock()
	if a.closed || to == a.self {
		a.mu.Unlock()
		return
	}
	if !a.ring.Seeded() {
		now := a.now()
		if !a.askedRingAt.IsZero() && now.Sub(a.askedRingAt) < time.Second {
			a.count("ipam_neighbour_digest_skipped")
			a.mu.Unlock()
			return
		}
		a.askedRingAt = now
	}
	d := a.digestLocked()
	d.Relay = a.ring.Seeded()
	a.count("ipam_neighbour_digest_sent")
	a.mu.Unlock()
	a.flush(outbox{replyTo: to, reply: [][]byte{appendDigestMessage(nil, &d)}})
}

// Quick rounds (issue 18). A change is broadcast once, and a copy lost on
// the way (a relay with no route to the receiver yet, a connection's
// channel queue full) used to wait for anti-entropy: each peer's digest
// to one random peer every 10 s, so a peer that missed a grant lacked it
// for up to tens of seconds (simulated N=1,000, fc682d6: the rings of two
// peers agreed 17.16 s after the last join, topology 8.44 s). Now a
// change of the ring (ours, or news merged from others) is followed by
// quickRounds digests, one a Tick, each to the next of our control
// neighbours (SetNeighbours; from a random one).
// The neighbours of a peer that missed a change mostly got it, and each
// of them sends its next rounds to one of its neighbours, so the peer gets
// a digest within a round or two and answers with the stretch that
// differs, which the digest's sender answers with what it lacks
// (handleDigestLocked): a digest exchange repairs both sides, so a
// differing digest needs no digest back. A repaired peer's ring changed,
// so it starts rounds of its own: the repair spreads as the change did.
// A change costs each peer quickRounds digests (530 bytes each, one hop),
// a burst of changes a digest a second; a still ring sends none. As in
// dns/digest.go, where names lost the same way waited on the same period.
const quickRounds = 5

// quickRoundsLocked starts the quick rounds after a change of the ring.
func (a *Allocator) quickRoundsLocked() {
	if !a.ring.Seeded() {
		return // a digest of no network is answered with the whole ring
	}
	if a.quick == 0 {
		a.quickNext = rand.IntN(1 << 30) // from a random neighbour
	}
	a.quick = quickRounds
}

// quickDigestLocked adds to o the next quick round's digest, if one is
// due (Tick).
func (a *Allocator) quickDigestLocked(o *outbox) {
	if a.quick == 0 || !a.ring.Seeded() {
		return
	}
	to, ok := a.quickPeerLocked()
	if !ok {
		return
	}
	a.quick--
	a.quickNext++
	d := a.digestLocked()
	a.count("ipam_quick_digest_sent")
	o.asks = append(o.asks, addressed{to, appendDigestMessage(nil, &d)})
}

// quickPeerLocked picks the next quick round's peer: the next control
// neighbour that is reachable. A peer with none (or a caller that does not
// call SetNeighbours) sends no quick rounds.
func (a *Allocator) quickPeerLocked() (key.Public, bool) {
	for range len(a.neighbourList) {
		p := a.neighbourList[a.quickNext%len(a.neighbourList)]
		if a.reachable[p] {
			return p, true
		}
		a.quickNext++
	}
	return key.Public{}, false
}

// A joiner's ring lost (issue 18). A peer with no ring asks a new control
// neighbour for one (NewNeighbour: a digest of no network, answered with
// the whole ring in parts), at most one a second, and a joiner's
// neighbours arrive together: one is asked. When a part of that answer
// was lost (simulated N=100, dnsjoin's run of Dec 1: the 100th joiner
// unseeded for 10 s after 84 ring messages), it waited for the next
// arrival of a neighbour or its first anti-entropy round (10 s). Now Tick
// asks the next neighbour again when the last ask is askRingEvery old
// and no part came in the last second (a ring still arriving is not
// asked for twice).
const askRingEvery = 3 * time.Second

// askRingAgainLocked adds to o a digest of no network to the next
// control neighbour, if we still have no ring (see above).
func (a *Allocator) askRingAgainLocked(o *outbox) {
	now := a.now()
	if a.ring.Seeded() || a.askedRingAt.IsZero() || now.Sub(a.askedRingAt) < askRingEvery || now.Sub(a.assembledAt) < time.Second {
		return
	}
	to, ok := a.quickPeerLocked()
	if !ok {
		return
	}
	a.quickNext++
	a.askedRingAt = now
	d := a.digestLocked()
	a.count("ipam_ring_asked_again")
	o.asks = append(o.asks, addressed{to, appendDigestMessage(nil, &d)})
}
