package discovery

import (
	"encoding/binary"

	"github.com/weavewg/weavewg/types/key"
)

// Summaries: an anti-entropy round that finds nothing to repair, the
// usual one, costs a few bytes. A round sent our digest (40 bytes per
// record: 40 KB at 1,000 peers) to a random neighbour every 10 s, which
// read it into a map and compared every record: O(N) per router per round
// in a mesh where nothing changed (in a still simulated mesh of 300
// routers, the largest part of each router's idle CPU left). Now the
// round sends a summary of what we hold, an order-free hash of every
// (key, version) the digest would list and their count, kept up to date
// as records change (summed); a neighbour whose own summary differs
// answers with its digest, and the exchange continues as a digest round
// did (digest.go).
//
// Summary message (type 9):
//
//	+--------------+-----------+-----------+---------+
//	| type = 9 (1) | flags (1) | count (4) | sum (8) |
//	+--------------+-----------+-----------+---------+
//
//	flags: bit 0 reply: the receiver answers with its digest, asking for
//	       a reply, if its own summary differs; without it the message
//	       only says that its sender knows summaries (each side sends one
//	       when a connection starts); bits 1-7 must be zero.
//
// A peer that does not know type 9 ignores it (counted as an unknown
// type) and is sent digests, as before: only a peer that sent us a
// summary gets summaries (conn.speaksSummary).
const (
	msgSummary byte = 9

	summaryReply byte = 1

	summaryLen = 1 + 1 + 4 + 8
)

// appendSummary appends a summary message.
func appendSummary(b []byte, flags byte, count uint32, sum uint64) []byte {
	b = append(b, msgSummary, flags)
	b = binary.BigEndian.AppendUint32(b, count)
	return binary.BigEndian.AppendUint64(b, sum)
}

// parseSummary parses a whole summary message.
func parseSummary(b []byte) (flags byte, count uint32, sum uint64, err error) {
	switch {
	case len(b) < summaryLen:
		return 0, 0, 0, errShort
	case len(b) > summaryLen:
		return 0, 0, 0, errTrailing
	case b[0] != msgSummary:
		return 0, 0, 0, errBadType
	case b[1]&^summaryReply != 0:
		return 0, 0, 0, errBadFlags
	}
	return b[1], binary.BigEndian.Uint32(b[2:6]), binary.BigEndian.Uint64(b[6:14]), nil
}

// summary is the hash and count of what digestLocked would list.
type summary struct {
	sum   uint64
	count uint32
}

// summedLocked keeps the summary's term of k in step with k's entry e
// (nil: forgotten), whose term was for version e.summed. Called for every
// change of r.recs (graphSetLocked), with forget before an entry is
// deleted.
func (r *Router) summedLocked(k key.Public, e *entry) {
	v := e.rec.Version
	if v == e.summed {
		return
	}
	if e.summed != 0 {
		r.summary.sum -= reachFingerprint(k, e.summed)
		r.summary.count--
	}
	if v != 0 {
		r.summary.sum += reachFingerprint(k, v)
		r.summary.count++
	}
	e.summed = v
}

// forgetSummedLocked takes k's term out of the summary; e is about to be
// deleted from r.recs.
func (r *Router) forgetSummedLocked(k key.Public, e *entry) {
	if e.summed != 0 {
		r.summary.sum -= reachFingerprint(k, e.summed)
		r.summary.count--
		e.summed = 0
	}
}

// sendSummaryLocked queues our summary to c.
func (r *Router) sendSummaryLocked(c *conn, flags byte) {
	c.queue(appendSummary(nil, flags, r.summary.count, r.summary.sum))
}

// handleSummaryLocked takes a summary from c: c knows summaries; if it
// asks for a reply and holds other versions than we do, a digest round
// starts, ours first.
func (r *Router) handleSummaryLocked(c *conn, m []byte) error {
	flags, count, sum, err := parseSummary(m)
	if err != nil {
		return err
	}
	c.speaksSummary = true
	r.ctr.inc(CtrSummariesReceived)
	if flags&summaryReply == 0 || count == r.summary.count && sum == r.summary.sum {
		return nil
	}
	r.sendDigestLocked(c, true)
	return nil
}
