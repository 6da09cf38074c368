package dns

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Repairing lost updates (issue 18). Each owner broadcasted its own
// entries once a round, and a round sends a message to every peer, so past
// beat.SpreadPeers peers it comes every N seconds (beat.Spread): an update
// lost on the way (a relay with no route yet to a joiner drops it) waited
// minutes at N=300, where names must agree within seconds. Now an owner's
// update carries all its entries (up to fullUpdateMax), so holding its
// newest version is holding all of them, and the digests below repair
// alone (the round broadcasts only past fullUpdateMax: Server.Tick). Only an owner's
// own messages are taken (HandleMessage), so another peer cannot hand on
// what it holds; it can say which owners it holds newer entries of.
//
// Every GossipInterval each peer sends one random reachable peer a digest:
// the owners it holds entries of, cut into digestBuckets by the first byte
// of the owner's key, a hash per bucket of (owner, newest version) in key
// order. The receiver answers the buckets that differ with a summary: its
// (owner, newest version) pairs there. The digest's sender pulls each owner
// whose entries the summary shows newer than its own from that owner (at
// most maxPulls a summary, each owner at most once per pullEvery), and the
// owner answers as it answers an arrival (SetReachable): its own entries
// and its copies of the puller's. So a lost update waits for the next
// digest its holder sends, GossipInterval on average and not growing with
// N, and costs a peer O(1) messages a round: a digest out and one in, a
// summary only where tables differ.
//
// Wire (version 1, types a version-1 peer before this ignores and counts as
// unknown, so they mix):
//
//	digest  (3): | ver | type | 0 0 | digestBuckets × hash 8 |
//	summary (4): | ver | type | count 2 | count × (owner 32 | version 8) |
//	pull    (5): | ver | type | 0 0 |
//
// A version is the owner's newest over its entries, tombstones included;
// a tombstone a peer expired before another (TombstoneExpiry after each
// saw it) can make a pull that brings nothing, at most once per pullEvery.
const (
	MsgDigest  byte = 3
	MsgSummary byte = 4
	MsgPull    byte = 5

	digestBuckets = 64
	digestMsgLen  = hdrLen + 8*digestBuckets
	summaryItem   = key.Len + 8
	// maxSummary bounds the pairs of one summary (one message).
	maxSummary = (MaxMessageLen - hdrLen) / summaryItem
	// maxPulls bounds the owners pulled for one summary, and pullEvery how
	// often one owner is pulled. A joiner whose arrival messages were lost
	// on the way (each owner sends each arrival its entries; relays with no
	// route to it yet drop them) lacks many owners at once: at 16 a summary
	// a simulated N=300 joiner still missed an owner's name after 100 s.
	maxPulls  = 256
	pullEvery = 3 * time.Second
)

func digestBucket(k key.Public) int { return int(k[0]) % digestBuckets }

// bucket is one digest bucket of a Table: its owners in key order and
// the hash of their (owner, newest version) pairs, recomputed when one of
// them changed (dirty). Keeping it so makes a digest round O(1) where
// building it from the whole table every round per peer was 7 % of an idle
// simulated mesh's CPU at N=150 (Table.newest, a map of every owner).
type bucket struct {
	owners []key.Public
	hash   uint64
	dirty  bool
}

func compareKeys(x, y key.Public) int { return bytes.Compare(x[:], y[:]) }

// bucketAddLocked adds owner k to its bucket.
func (t *Table) bucketAddLocked(k key.Public) {
	b := &t.buckets[digestBucket(k)]
	if i, found := slices.BinarySearchFunc(b.owners, k, compareKeys); !found {
		b.owners = slices.Insert(b.owners, i, k)
	}
	b.dirty = true
}

// bucketRemoveLocked removes owner k from its bucket.
func (t *Table) bucketRemoveLocked(k key.Public) {
	b := &t.buckets[digestBucket(k)]
	if i, found := slices.BinarySearchFunc(b.owners, k, compareKeys); found {
		b.owners = slices.Delete(b.owners, i, i+1)
	}
	b.dirty = true
}

// newestOfLocked is owner k's newest version, 0 if we hold none of its
// entries.
func (t *Table) newestOfLocked(k key.Public) uint64 {
	if o := t.owners[k]; o != nil {
		return o.newest
	}
	return 0
}

// digest returns the hash of each bucket.
func (t *Table) digest() [digestBuckets]uint64 {
	var out [digestBuckets]uint64
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.buckets {
		b := &t.buckets[i]
		if b.dirty {
			b.hash = hashOwners(b.owners, t.newestOfLocked)
			b.dirty = false
		}
		out[i] = b.hash
	}
	return out
}

// summaryOf returns the (owner, newest version) pairs of the buckets
// where differ is true, at most maxSummary.
func (t *Table) summaryOf(differ *[digestBuckets]bool) []summaryPair {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for i := range t.buckets {
		if differ[i] {
			n += len(t.buckets[i].owners)
		}
	}
	ps := make([]summaryPair, 0, min(n, maxSummary))
	for i := range t.buckets {
		if !differ[i] {
			continue
		}
		for _, k := range t.buckets[i].owners {
			if v := t.newestOfLocked(k); v > 0 && len(ps) < maxSummary {
				ps = append(ps, summaryPair{k, v})
			}
		}
	}
	return ps
}

// newestOf returns the newest version we hold of each pair's owner (0:
// none).
func (t *Table) newestOf(ps []summaryPair) []uint64 {
	out := make([]uint64, len(ps))
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, p := range ps {
		out[i] = t.newestOfLocked(p.Owner)
	}
	return out
}

// hashOwners hashes the (owner, newest version) pairs of owners, in their
// order, leaving out owners of version 0 (an owner whose every entry is
// at version 0 has no newest version); 0 when none is left. The wire's
// bucket hash: the first 8 bytes of SHA-256 over the pairs.
func hashOwners(owners []key.Public, newest func(key.Public) uint64) uint64 {
	var h hash.Hash
	var buf [summaryItem]byte
	for _, k := range owners {
		v := newest(k)
		if v == 0 {
			continue
		}
		if h == nil {
			h = sha256.New()
		}
		copy(buf[:], k[:])
		binary.BigEndian.PutUint64(buf[key.Len:], v)
		h.Write(buf[:])
	}
	if h == nil {
		return 0
	}
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// appendDigest appends the digest message of m, each owner's newest
// version, computed from scratch (a Table keeps its own: Table.digest).
func appendDigest(out []byte, m map[key.Public]uint64) []byte {
	var b [digestBuckets][]key.Public
	for k := range m {
		b[digestBucket(k)] = append(b[digestBucket(k)], k)
	}
	var hs [digestBuckets]uint64
	for i := range b {
		slices.SortFunc(b[i], compareKeys)
		hs[i] = hashOwners(b[i], func(k key.Public) uint64 { return m[k] })
	}
	return appendDigestHashes(out, &hs)
}

// appendDigestHashes appends a digest message of the bucket hashes hs.
func appendDigestHashes(out []byte, hs *[digestBuckets]uint64) []byte {
	out = append(out, wireVersion, MsgDigest, 0, 0)
	for _, h := range hs {
		out = binary.BigEndian.AppendUint64(out, h)
	}
	return out
}

// summaryPair is one owner's newest version, as a summary carries it.
type summaryPair struct {
	Owner   key.Public
	Version uint64
}

func appendSummary(out []byte, ps []summaryPair) []byte {
	out = slices.Grow(out, hdrLen+len(ps)*summaryItem)
	out = append(out, wireVersion, MsgSummary)
	out = binary.BigEndian.AppendUint16(out, uint16(len(ps)))
	for _, p := range ps {
		out = append(out, p.Owner[:]...)
		out = binary.BigEndian.AppendUint64(out, p.Version)
	}
	return out
}

// parseRepair parses a digest, summary or pull (b[1] says which). It never
// panics.
func parseRepair(b []byte) (digest [digestBuckets]uint64, pairs []summaryPair, err error) {
	if len(b) < hdrLen || b[0] != wireVersion {
		return digest, nil, ErrMalformed
	}
	switch b[1] {
	case MsgDigest:
		if len(b) != digestMsgLen || b[2] != 0 || b[3] != 0 {
			return digest, nil, ErrMalformed
		}
		for i := range digest {
			digest[i] = binary.BigEndian.Uint64(b[hdrLen+8*i:])
		}
	case MsgSummary:
		n := int(binary.BigEndian.Uint16(b[2:]))
		if n > maxSummary || len(b) != hdrLen+n*summaryItem {
			return digest, nil, ErrMalformed
		}
		pairs = make([]summaryPair, n)
		for i := range pairs {
			p := b[hdrLen+i*summaryItem:]
			pairs[i] = summaryPair{key.Public(p[:key.Len]), binary.BigEndian.Uint64(p[key.Len:])}
		}
	case MsgPull:
		if len(b) != hdrLen || b[2] != 0 || b[3] != 0 {
			return digest, nil, ErrMalformed
		}
	default:
		return digest, nil, ErrUnknownType
	}
	return digest, pairs, nil
}

// isRepair reports whether msg is a digest, summary or pull.
func isRepair(msg []byte) bool {
	return len(msg) >= 2 && msg[0] == wireVersion && (msg[1] == MsgDigest || msg[1] == MsgSummary || msg[1] == MsgPull)
}

// SendDigest sends peer to a digest of the table (see above). A Server's
// own loop sends digests itself (DigestTick); a caller that drives Tick
// calls DigestTick every second, or this. It needs a Transport that can
// send to one peer (Sender).
func (s *Server) SendDigest(to key.Public) {
	sender, ok := s.sender()
	if !ok || to == s.cfg.Self {
		return
	}
	hs := s.table.digest()
	if s.sendTo(sender, to, appendDigestHashes(nil, &hs)) {
		s.c.digestSent.Add(1)
	}
}

// Quick rounds. A change (a peer arrived, entries arrived that were news,
// our own entries changed) is followed by quickRounds digest rounds a
// second apart, then the pace is GossipInterval again. An update lost on
// its way (a relay with no route to a joiner yet, a connection's queue
// full or closed) is then repaired within seconds: the peer that lacks it
// sends digests itself if it saw the change (an arrival), and otherwise
// the peers that got the news send theirs, to random peers, and a digest
// that differs is answered with a digest back (handleRepair), so either
// side of an exchange pulls what it lacks. At the GossipInterval pace
// alone a lost update waited for the lacking peer's next round: at
// N=300, names were missing for 5-6 s after everything else agreed (Nov
// 30). A change costs each peer quickRounds digests, O(N) for the mesh;
// a still mesh sends one every GossipInterval.
const (
	quickRounds = 5
	quickEvery  = time.Second
	// digestBackEvery bounds how often a differing digest from one peer
	// is answered with a digest back, so that two peers whose tables
	// differ do not send digests back and forth.
	digestBackEvery = 5 * time.Second
)

// changed starts the quick rounds (see above).
func (s *Server) changed() {
	s.mu.Lock()
	s.quick = quickRounds
	s.mu.Unlock()
}

// DigestTick sends a digest when one is due: every second for quickRounds
// seconds after a change, each to the next reachable control neighbour
// (SetNeighbours; a random reachable peer while none is set), else every
// GossipInterval (DefaultGossipInterval if GossipInterval is negative)
// from New on, to a random reachable peer. Call it every second; the
// Server's own loop does.
//
// Quick rounds went to random peers, each digest and its answers crossing
// the mean path (2.5 hops at 1,000 simulated peers), so a change's
// rounds cost more frames per peer the larger the mesh; a neighbour's
// costs one. The neighbours of a peer that missed an update mostly got
// it, and each digest exchange repairs both sides (handleRepair), so a
// repair spreads over the control graph as the change did. The periodic
// round keeps going to random peers: it costs little, and it mixes the
// whole mesh where the neighbours of a region all lack the same update.
func (s *Server) DigestTick() {
	s.returnStale() // the states taken in the last second (welcome.go)
	every := s.cfg.GossipInterval
	if every <= 0 {
		every = DefaultGossipInterval
	}
	now := s.cfg.Now()
	s.mu.Lock()
	quick := s.quick > 0
	if !quick && now.Sub(s.lastDigest) < every {
		s.mu.Unlock()
		return
	}
	to, ok := key.Public{}, false
	if quick {
		to, ok = s.nextNeighbourLocked()
	}
	if !ok {
		to, ok = s.reach.random()
	}
	if !ok {
		s.mu.Unlock()
		return
	}
	if quick {
		s.quick--
	}
	s.lastDigest = now
	s.mu.Unlock()
	s.SendDigest(to)
}

// SetNeighbours tells the server which peers it holds a control connection
// to (each call replaces the set): the quick rounds' digests go to them
// (DigestTick).
func (s *Server) SetNeighbours(direct []key.Public) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(direct, s.neighbours) {
		return
	}
	s.neighbours = append(s.neighbours[:0], direct...)
	s.next = rand.IntN(len(direct) + 1) // from a random one
}

// nextNeighbourLocked returns the next reachable neighbour in turn.
func (s *Server) nextNeighbourLocked() (key.Public, bool) {
	for range len(s.neighbours) {
		p := s.neighbours[s.next%len(s.neighbours)]
		s.next++
		if p != s.cfg.Self && s.reach.has(p) {
			return p, true
		}
	}
	return key.Public{}, false
}

// pruned returns m, or a new map when m is nil or has grown past the
// bound a reachable set of n peers needs (entries of peers long gone).
func pruned(m map[key.Public]time.Time, n int) map[key.Public]time.Time {
	if m == nil || len(m) > 4*n+64 {
		return map[key.Public]time.Time{}
	}
	return m
}

// sendTo sends msg to peer to, counting a failure (dns_send_failed: no
// route to it).
func (s *Server) sendTo(sender Sender, to key.Public, msg []byte) bool {
	if err := sender.Send(to, msg); err != nil {
		s.c.sendFailed.Add(1)
		return false
	}
	return true
}

func (s *Server) sender() (Sender, bool) {
	tb := s.transport.Load()
	if tb == nil {
		return nil, false
	}
	sender, ok := tb.t.(Sender)
	return sender, ok
}

// handleRepair answers a digest with a summary of the buckets that
// differ (and a digest back), a summary with pulls, and a pull with our
// own entries.
func (s *Server) handleRepair(from key.Public, msg []byte) error {
	digest, pairs, err := parseRepair(msg)
	if err != nil {
		s.c.gossipMalformed.Add(1)
		return err
	}
	sender, ok := s.sender()
	if !ok || from == s.cfg.Self {
		return nil
	}
	switch msg[1] {
	case MsgDigest:
		s.c.digestReceived.Add(1)
		mine := s.table.digest()
		var differ [digestBuckets]bool
		any := false
		for i := range mine {
			if mine[i] != digest[i] {
				differ[i], any = true, true
			}
		}
		if !any {
			return nil
		}
		if ps := s.table.summaryOf(&differ); len(ps) > 0 && s.sendTo(sender, from, appendSummary(nil, ps)) {
			s.c.summarySent.Add(1)
		}
		// The summary lets from pull what we hold newer; a digest back
		// lets us pull what it does. At most one a digestBackEvery to a
		// peer: the digest back differs at from too and is answered
		// with one, and then the exchange ends.
		now := s.cfg.Now()
		s.mu.Lock()
		back := now.Sub(s.backTo[from]) >= digestBackEvery
		if back {
			s.backTo = pruned(s.backTo, s.reach.len())
			s.backTo[from] = now
		}
		s.mu.Unlock()
		if back {
			s.c.digestBack.Add(1)
			s.SendDigest(from)
		}
	case MsgSummary:
		ours := s.table.newestOf(pairs)
		now := s.cfg.Now()
		pulls := 0
		for i, p := range pairs {
			if pulls >= maxPulls {
				break
			}
			if p.Owner == s.cfg.Self || p.Version <= ours[i] {
				continue
			}
			s.mu.Lock()
			pull := s.reach.has(p.Owner) && now.Sub(s.pulled[p.Owner]) >= pullEvery
			if pull {
				s.pulled = pruned(s.pulled, s.reach.len())
				s.pulled[p.Owner] = now
			}
			s.mu.Unlock()
			if pull && s.sendTo(sender, p.Owner, []byte{wireVersion, MsgPull, 0, 0}) {
				s.c.pullSent.Add(1)
				pulls++
			}
		}
	case MsgPull:
		s.c.pullAnswered.Add(1)
		s.sendOwnTo(sender, []key.Public{from})
	}
	return nil
}

// sendOwnTo sends each peer what it takes from us (sendOwn), reading the
// table once for all of them. It returns to how many peers it sent.
func (s *Server) sendOwnTo(sender Sender, peers []key.Public) int {
	owners := make(map[key.Public]bool, len(peers)+1)
	owners[s.cfg.Self] = true
	for _, p := range peers {
		owners[p] = true
	}
	of := s.table.entriesOf(owners)
	n := 0
	for _, p := range peers {
		if s.sendOwn(sender, p, of[s.cfg.Self], of[p]) {
			n++
		}
	}
	return n
}

// sendOwn sends peer p what it takes from us: our own entries and the
// copies we hold of its entries (theirs), so it buries stale ones of a
// previous run. It reports whether it sent anything.
func (s *Server) sendOwn(sender Sender, p key.Public, own, theirs []Entry) bool {
	es := append(slices.Clip(own), theirs...)
	if p == s.cfg.Self {
		es = own
	}
	sent := false
	for _, m := range stateMessages(es) {
		if s.sendTo(sender, p, m) {
			s.c.gossipSent.Add(1)
			sent = true
		}
	}
	return sent
}
