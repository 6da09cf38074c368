package discovery

import (
	"encoding/binary"

	"github.com/weavewg/weavewg/types/key"
)

// Digests: what a peer holds, as (key, version) pairs, so that a new
// connection and an anti-entropy round send only the records the other
// side lacks (a round with a peer that knows summaries sends a summary
// first, and a digest only if they differ: summary.go). A record is up to 1.5 KB and a digest entry 40 bytes: at
// 1,000 peers a full state is about 1 MB, its digest 40 KB. Sending the
// full state on every connection and every round cost O(N) records per
// peer per round (O(N²) across the mesh: 150 MB every 10 s at 1,000
// peers) and O(N) records per new connection, a dozen per join.
//
// Digest message:
//
//	+--------------+-----------+-----------+-----------------------------------+
//	| type = 6 (1) | flags (1) | count (2) | count × ( key (32) | version (8) ) |
//	+--------------+-----------+-----------+-----------------------------------+
//
//	flags: bit 0 more: further parts of this digest follow (a digest of
//	       more than maxDigestEntries records travels in parts, and the
//	       receiver acts on the last);
//	       bit 1 reply: the receiver answers with its own digest if the
//	       sender holds a version it lacks (anti-entropy; the digests a
//	       new connection starts with are sent by both sides and need no
//	       answer); bits 2-7 must be zero.
//
// The receiver of a whole digest sends, as records messages, each record
// it holds at a version above the digest's (absent: 0). A peer that does
// not know type 6 ignores it and sends its full state first on a new
// connection: a connection whose first message after the hello is a
// records message is served full states, as before (conn.legacy).
const (
	msgDigest byte = 6

	digestMore  byte = 1
	digestReply byte = 2

	digestHdrLen     = 1 + 1 + 2
	digestEntryLen   = key.Len + 8
	maxDigestEntries = (maxPlaintext - digestHdrLen) / digestEntryLen
)

// DigestEntry is one record a digest lists.
type DigestEntry struct {
	Key     key.Public
	Version uint64
}

// AppendDigestMessage appends one digest message holding entries (at most
// maxDigestEntries) to b.
func AppendDigestMessage(b []byte, flags byte, entries []DigestEntry) []byte {
	b = append(b, msgDigest, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(len(entries)))
	for _, e := range entries {
		b = append(b, e.Key[:]...)
		b = binary.BigEndian.AppendUint64(b, e.Version)
	}
	return b
}

// ParseDigestMessage parses a whole digest message, type byte included.
func ParseDigestMessage(b []byte) (flags byte, entries []DigestEntry, err error) {
	if len(b) < digestHdrLen {
		return 0, nil, errShort
	}
	if b[0] != msgDigest {
		return 0, nil, errBadType
	}
	flags = b[1]
	if flags&^(digestMore|digestReply) != 0 {
		return 0, nil, errBadFlags
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n > maxDigestEntries {
		return 0, nil, errTooMany
	}
	b = b[digestHdrLen:]
	if len(b) < n*digestEntryLen {
		return 0, nil, errShort
	}
	if len(b) > n*digestEntryLen {
		return 0, nil, errTrailing
	}
	entries = make([]DigestEntry, n)
	for i := range entries {
		copy(entries[i].Key[:], b)
		entries[i].Version = binary.BigEndian.Uint64(b[key.Len:])
		b = b[digestEntryLen:]
	}
	return flags, entries, nil
}

// packDigest encodes entries into digest messages of at most
// maxDigestEntries each, the more flag on all but the last; reply goes on
// every part.
func packDigest(entries []DigestEntry, reply bool) [][]byte {
	var flags byte
	if reply {
		flags = digestReply
	}
	var msgs [][]byte
	for {
		part := entries[:min(len(entries), maxDigestEntries)]
		entries = entries[len(part):]
		f := flags
		if len(entries) > 0 {
			f |= digestMore
		}
		msgs = append(msgs, AppendDigestMessage(make([]byte, 0, digestHdrLen+len(part)*digestEntryLen), f, part))
		if len(entries) == 0 {
			return msgs
		}
	}
}

// digestLocked lists the records we would send in a full state.
func (r *Router) digestLocked() []DigestEntry {
	out := make([]DigestEntry, 0, len(r.recs)+1)
	out = append(out, DigestEntry{r.self, r.selfRec.Version})
	for k, e := range r.recs {
		if k == r.self || e.rec.Version == 0 {
			continue // version 0: a placeholder made from a hello
		}
		out = append(out, DigestEntry{k, e.rec.Version})
	}
	return out
}

// sendDigestLocked queues our digest to c; reply asks c to answer with its
// own if it holds something we lack. A peer that never sent us a digest
// (conn.legacy) gets the full state instead.
func (r *Router) sendDigestLocked(c *conn, reply bool) {
	if c.legacy {
		r.sendFullStateLocked(c)
		return
	}
	r.ctr.inc(CtrDigestsSent)
	for _, m := range packDigest(r.digestLocked(), reply) {
		c.queue(m)
	}
}

// handleDigestLocked takes one digest part from c; on the last part it
// sends c the records it lacks and, if asked, our digest when c holds
// versions we lack.
func (r *Router) handleDigestLocked(c *conn, m []byte) error {
	flags, entries, err := ParseDigestMessage(m)
	if err != nil {
		return err
	}
	c.speaksDigest = true
	if c.digest == nil {
		c.digest = make(map[key.Public]uint64, len(entries))
	}
	if len(c.digest)+len(entries) > MaxPeers+1 {
		c.digest = nil
		return errTooMany
	}
	for _, e := range entries {
		c.digest[e.Key] = max(c.digest[e.Key], e.Version)
	}
	if flags&digestMore != 0 {
		return nil
	}
	theirs := c.digest
	c.digest = nil
	r.ctr.inc(CtrDigestsReceived)
	var push []*Record
	// Not our record while a new version of it is pending
	// (selfNeighborsChangedLocked): it goes to every connection within
	// selfPublishDelay, and the one we hold now would be flooded through
	// the whole mesh only to be replaced. A joiner's first connection
	// sent its record without neighbours, one of the ~18 record
	// versions every router took per join.
	if r.selfRec.Version > theirs[r.self] && !r.publishPending {
		push = append(push, r.copySelf())
	}
	for k, e := range r.recs {
		if k == r.self || e.rec.Version == 0 || e.rec.Version <= theirs[k] {
			continue
		}
		rec := e.rec
		push = append(push, &rec)
	}
	r.sendRecordsLocked(c, push)
	if flags&digestReply == 0 {
		return nil
	}
	for k, v := range theirs {
		if r.lacksLocked(k, v) {
			r.sendDigestLocked(c, false)
			return nil
		}
	}
	return nil
}

// lacksLocked reports whether a record of k at version v would be news to
// us (before its signature is checked).
func (r *Router) lacksLocked(k key.Public, v uint64) bool {
	return r.wantsLocked(&Record{Key: k, Version: v})
}
