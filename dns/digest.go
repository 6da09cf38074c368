package dns

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Repairing lost updates (issue 18). Each owner broadcasts its own entries
// once a round, and a round sends a message to every peer, so past
// beat.SpreadPeers peers it comes every N seconds (beat.Spread): an update
// lost on the way (a relay with no route yet to a joiner drops it) waited
// minutes at N=300, where names must agree within seconds. Only an owner's
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
	pullEvery = 10 * time.Second
)

func digestBucket(k key.Public) int { return int(k[0]) % digestBuckets }

// newest returns each owner's newest version in t.
func (t *Table) newest() map[key.Public]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[key.Public]uint64)
	for _, r := range t.entries {
		if r.Version > m[r.Owner] {
			m[r.Owner] = r.Version
		}
	}
	return m
}

// byBucket sorts the owners of m into their buckets, in key order.
func byBucket(m map[key.Public]uint64) [digestBuckets][]key.Public {
	var b [digestBuckets][]key.Public
	for k := range m {
		i := digestBucket(k)
		b[i] = append(b[i], k)
	}
	for i := range b {
		slices.SortFunc(b[i], func(x, y key.Public) int {
			switch {
			case x.Less(y):
				return -1
			case y.Less(x):
				return 1
			}
			return 0
		})
	}
	return b
}

// appendDigest appends the digest message of m.
func appendDigest(out []byte, m map[key.Public]uint64) []byte {
	out = append(out, wireVersion, MsgDigest, 0, 0)
	buckets := byBucket(m)
	var buf [summaryItem]byte
	for _, owners := range buckets {
		if len(owners) == 0 {
			out = binary.BigEndian.AppendUint64(out, 0)
			continue
		}
		h := sha256.New()
		for _, k := range owners {
			copy(buf[:], k[:])
			binary.BigEndian.PutUint64(buf[key.Len:], m[k])
			h.Write(buf[:])
		}
		out = append(out, h.Sum(nil)[:8]...)
	}
	return out
}

// summaryPair is one owner's newest version, as a summary carries it.
type summaryPair struct {
	Owner   key.Public
	Version uint64
}

func appendSummary(out []byte, ps []summaryPair) []byte {
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

// SendDigest sends peer to a digest of the table (see above). The Server's
// own loop calls it every GossipInterval for a random reachable peer; a
// caller that drives Tick itself calls it. It needs a Transport that can
// send to one peer (Sender).
func (s *Server) SendDigest(to key.Public) {
	sender, ok := s.sender()
	if !ok || to == s.cfg.Self {
		return
	}
	if sender.Send(to, appendDigest(nil, s.table.newest())) == nil {
		s.c.digestSent.Add(1)
	}
}

// sendDigestRandom sends a digest to one reachable peer chosen at random.
func (s *Server) sendDigestRandom() {
	s.mu.Lock()
	var to key.Public
	n := len(s.reach)
	if s.reach[s.cfg.Self] {
		n--
	}
	if n > 0 {
		i := rand.IntN(n)
		for k := range s.reach {
			if k == s.cfg.Self {
				continue
			}
			if i == 0 {
				to = k
				break
			}
			i--
		}
	}
	s.mu.Unlock()
	if !to.IsZero() {
		s.SendDigest(to)
	}
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
// differ, a summary with pulls, and a pull with our own entries.
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
		ours := s.table.newest()
		mine := appendDigest(nil, ours)
		buckets := byBucket(ours)
		var ps []summaryPair
		for i := range digestBuckets {
			if binary.BigEndian.Uint64(mine[hdrLen+8*i:]) == digest[i] {
				continue
			}
			for _, k := range buckets[i] {
				if len(ps) < maxSummary {
					ps = append(ps, summaryPair{k, ours[k]})
				}
			}
		}
		if len(ps) > 0 && sender.Send(from, appendSummary(nil, ps)) == nil {
			s.c.summarySent.Add(1)
		}
	case MsgSummary:
		ours := s.table.newest()
		now := s.cfg.Now()
		pulls := 0
		for _, p := range pairs {
			if pulls >= maxPulls {
				break
			}
			if p.Owner == s.cfg.Self || p.Version <= ours[p.Owner] {
				continue
			}
			s.mu.Lock()
			pull := s.reach[p.Owner] && now.Sub(s.pulled[p.Owner]) >= pullEvery
			if pull {
				if s.pulled == nil || len(s.pulled) > 4*len(s.reach)+64 {
					s.pulled = map[key.Public]time.Time{}
				}
				s.pulled[p.Owner] = now
			}
			s.mu.Unlock()
			if pull && sender.Send(p.Owner, []byte{wireVersion, MsgPull, 0, 0}) == nil {
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
// table once for all of them.
func (s *Server) sendOwnTo(sender Sender, peers []key.Public) {
	owners := make(map[key.Public]bool, len(peers)+1)
	owners[s.cfg.Self] = true
	for _, p := range peers {
		owners[p] = true
	}
	of := s.table.entriesOf(owners)
	for _, p := range peers {
		s.sendOwn(sender, p, of[s.cfg.Self], of[p])
	}
}

// sendOwn sends peer p what it takes from us: our own entries and the
// copies we hold of its entries (theirs), so it buries stale ones of a
// previous run.
func (s *Server) sendOwn(sender Sender, p key.Public, own, theirs []Entry) {
	es := append(slices.Clip(own), theirs...)
	if p == s.cfg.Self {
		es = own
	}
	for _, m := range AppendMessages(MsgState, es) {
		if sender.Send(p, m) == nil {
			s.c.gossipSent.Add(1)
		}
	}
}
