package ipam

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Wire format. Every IPAM message is
//
//	+-----------+--------+------------------------------+
//	| version 1 | type 1 | body (layout fixed per type) |
//	+-----------+--------+------------------------------+
//
// Version rule: a receiver refuses a version other than WireVersion and a
// type it does not know (both counted, neither fatal); a known type's body
// must be exactly its layout, without trailing bytes. All integers are
// big-endian.
//
// msgRing (Broadcast), the whole ring state:
//
//	+--------------------+----------+----------------+----------+---------+
//	| range addr 4       | bits 1   | seed peer 32   | seed id 8| flags 1 |
//	+--------------------+----------+----------------+----------+---------+
//	flags: bit 0 used (Ring.Used); other bits must be zero.
//	| npeers 2 | npeers × peer key 32 (strictly increasing)      |
//	+----------+-------------------------------------------------+
//	| nentries 2 | nentries × entry 80:                          |
//	|   token 4 | owner index 2 | version 4 | free 4 |           |
//	|   writer index 2 | writer's signature 64                   |
//	+------------+-----------------------------------------------+
//	| nvotes 2 | nvotes × vote 74:                               |
//	|   voter index 2 | dead index 2 | seq 4 | issuer index 2 |  |
//	|   voter's signature 64                                     |
//	+----------+-------------------------------------------------+
//	| ntransfers 2 | ntransfers × transfer:                      |
//	|   dead index 2 | issuer index 2 | flags 1 (1 done, 2 withdrawn)
//	|   issuer's signature 64 | ncert 2 (zero unless done) |     |
//	|   ncert × ( voter index 2 | seq 4 | sig flag 1 |          |
//	|             voter's signature 64, only if sig flag is 1 ) |
//	+--------------+---------------------------------------------+
//
// A certificate vote's signature is left out (sig flag 0) exactly when the
// vote table holds that voter's vote on the same dead peer with the same
// seq, issuer and signature (the usual case: votes stay put once a
// transfer completes); otherwise it is inline. The signatures (sign.go) are
// not checked by the parser: the receiver checks them (authority.go).
//
// Peer indexes point into the peer table; every table key is used. The
// encoding is canonical (one byte string per ring), so Append(Parse(b)) == b.
//
// msgRequest (Send, to the chosen donor): "give me some space".
//
//	+----------------+--------------+
//	| seed peer 32   | seed id 8    |
//	+----------------+--------------+
//
// The seed lets a donor of another network refuse instead of granting.
//
// msgRequestIn (Send, to the peer owning most of the subnet): "give me
// some space inside this subnet" (ipam/subnet.go).
//
//	+----------------+--------------+---------------+--------+
//	| seed peer 32   | seed id 8    | subnet addr 4 | bits 1 |
//	+----------------+--------------+---------------+--------+
//
// The subnet has no host bits set and lies inside the range.
//
// msgRingPart and msgRingAsk (parts.go, answers.go) and msgRingDigest
// (digest.go) are described where they are built.

// WireVersion is the version byte of every message.
// Version 2 added the ring's flags byte; version 3 the signatures, entry
// writers and certificates (issue 14); version 4 ring parts (msgRingPart:
// a ring beyond one message, changes sent alone, relay) and lifted the
// ring's size bounds from 192 peers and 384 entries (issue 18).
const WireVersion = 4

// Message types.
const (
	msgRing      byte = 1
	msgRequest   byte = 2
	msgRequestIn byte = 3
	msgRingPart  byte = 4
	// msgRingDigest (5, digest.go)
	msgRingAsk byte = 6 // a msgRingPart that wants an answer (answers.go)
)

// Size bounds. A ring holds at most MaxEntries entries and MaxPeers keys
// (a network of a few thousand peers); one message at most MaxMessage
// bytes, under one discovery channel message (discovery.MaxChannelPayload,
// about 65,300 bytes), so a ring larger than that goes out in parts
// (parts.go). The vote table holds the votes of pending rmpeers only (a
// peer forgets the votes of a transfer it concluded, transfer.go), so
// MaxVotes bounds the rmpeers pending at once (four at 1,000 owners), not
// the network's life; MaxTransfers and MaxCertVotes bound the completed
// rmpeers the network keeps (each keeps its certificate). Votes and
// transfers travel in parts of their own, each within the part bounds
// (parts.go).
const (
	MaxPeers     = 8192
	MaxEntries   = 8192
	MaxTransfers = 256
	MaxVotes     = 4096
	// MaxCertVotes bounds the votes of all certificates together.
	MaxCertVotes = 32768

	hdrLen        = 2
	ringFlagUsed  = 1
	ringFixedLen  = 4 + 1 + key.Len + 8 + 1 + 2*4
	entryLen      = 4 + 2 + 4 + 4 + 2 + key.SigLen
	transferLen   = 2 + 2 + 1 + key.SigLen + 2
	certVoteLen   = 2 + 4 + 1
	voteLen       = 2 + 2 + 4 + 2 + key.SigLen
	requestLen    = key.Len + 8
	requestInLen  = requestLen + 4 + 1
	certSigInline = 1

	// MaxMessage bounds every IPAM message.
	MaxMessage = 60000
)

// tableBounds bounds the vote and transfer tables of one encoding.
type tableBounds struct{ votes, transfers, certVotes, certSigs int }

// ringTables bounds a whole ring (the state file, a msgRing; a msgRing is
// further bounded by MaxMessage). partTables (parts.go) bounds one part.
var ringTables = tableBounds{MaxVotes, MaxTransfers, MaxCertVotes, MaxCertVotes}

const (
	flagDone      = 1
	flagWithdrawn = 2
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("ipam: malformed message")

// peerTable collects the keys a ring mentions, sorted.
func peerTable(r *Ring) ([]key.Public, map[key.Public]uint16, error) {
	set := map[key.Public]bool{}
	for _, e := range r.Entries {
		set[e.Owner] = true
	}
	for _, t := range r.Transfers {
		set[t.Dead], set[t.Issuer] = true, true
	}
	for _, v := range r.Votes {
		set[v.Voter], set[v.Dead], set[v.Issuer] = true, true, true
	}
	for _, e := range r.Entries {
		set[e.Writer] = true
	}
	for _, t := range r.Transfers {
		for _, c := range t.Cert {
			set[c.Voter] = true
		}
	}
	if len(set) > MaxPeers {
		return nil, nil, ErrRingFull
	}
	keys := make([]key.Public, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	idx := make(map[key.Public]uint16, len(keys))
	for i, k := range keys {
		idx[k] = uint16(i)
	}
	return keys, idx, nil
}

// AppendRing appends the body of a ring message (no header) to b: the
// whole ring, as saved in the state file. It fails only for a ring beyond
// the size bounds. A ring message (msgRing) holds at most MaxMessage
// bytes; a larger ring goes out in parts (parts.go).
func AppendRing(b []byte, r *Ring) ([]byte, error) {
	if err := r.checkCounts(); err != nil {
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
	b = appendRingHead(b, r, flags, keys)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Entries)))
	for i := range r.Entries {
		b = appendEntry(b, &r.Entries[i], idx)
	}
	return appendVotesTransfers(b, r, idx, ringTables.certSigs)
}

// checkCounts checks the counted bounds (not the peer table's).
func (r *Ring) checkCounts() error {
	return r.checkTables(MaxEntries, ringTables)
}

// checkTables checks r's counts against at most entries entries and tb.
func (r *Ring) checkTables(entries int, tb tableBounds) error {
	if len(r.Entries) > entries || len(r.Transfers) > tb.transfers || len(r.Votes) > tb.votes || r.certVotes() > tb.certVotes {
		return ErrRingFull
	}
	return nil
}

// checkBounds reports whether r encodes: checkCounts, and at most
// MaxPeers distinct keys (counted only when the items could mention more).
func (r *Ring) checkBounds() error {
	if err := r.checkCounts(); err != nil {
		return err
	}
	if 2*len(r.Entries)+3*len(r.Votes)+2*len(r.Transfers)+r.certVotes() <= MaxPeers {
		return nil
	}
	_, _, err := peerTable(r)
	return err
}

// appendRingHead appends the fixed part and the peer table.
func appendRingHead(b []byte, r *Ring, flags byte, keys []key.Public) []byte {
	a4 := r.Range.Addr().As4()
	b = append(b, a4[:]...)
	b = append(b, byte(r.Range.Bits()))
	b = append(b, r.Seed.Peer[:]...)
	b = binary.BigEndian.AppendUint64(b, r.Seed.ID)
	b = append(b, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(len(keys)))
	for _, k := range keys {
		b = append(b, k[:]...)
	}
	return b
}

func appendEntry(b []byte, e *Entry, idx map[key.Public]uint16) []byte {
	b = binary.BigEndian.AppendUint32(b, e.Token)
	b = binary.BigEndian.AppendUint16(b, idx[e.Owner])
	b = binary.BigEndian.AppendUint32(b, e.Version)
	b = binary.BigEndian.AppendUint32(b, e.Free)
	b = binary.BigEndian.AppendUint16(b, idx[e.Writer])
	return append(b, e.Sig[:]...)
}

// appendVotesTransfers appends the vote and transfer tables, with at most
// maxSigs certificate signatures inline.
func appendVotesTransfers(b []byte, r *Ring, idx map[key.Public]uint16, maxSigs int) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Votes)))
	for _, v := range r.Votes {
		b = binary.BigEndian.AppendUint16(b, idx[v.Voter])
		b = binary.BigEndian.AppendUint16(b, idx[v.Dead])
		b = binary.BigEndian.AppendUint32(b, v.Seq)
		b = binary.BigEndian.AppendUint16(b, idx[v.Issuer])
		b = append(b, v.Sig[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Transfers)))
	inline := 0
	for _, t := range r.Transfers {
		b = binary.BigEndian.AppendUint16(b, idx[t.Dead])
		b = binary.BigEndian.AppendUint16(b, idx[t.Issuer])
		var f byte
		if t.Done {
			f |= flagDone
		}
		if t.Withdrawn {
			f |= flagWithdrawn
		}
		b = append(b, f)
		b = append(b, t.Sig[:]...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(t.Cert)))
		for _, c := range t.Cert {
			b = binary.BigEndian.AppendUint16(b, idx[c.Voter])
			b = binary.BigEndian.AppendUint32(b, c.Seq)
			if v, ok := r.vote(c.Voter, t.Dead); ok && v.Seq == c.Seq && v.Issuer == t.Issuer && v.Sig == c.Sig {
				b = append(b, 0)
				continue
			}
			if inline++; inline > maxSigs {
				return b, ErrRingFull
			}
			b = append(b, certSigInline)
			b = append(b, c.Sig[:]...)
		}
	}
	return b, nil
}

type reader struct {
	b     []byte
	err   error
	flags byte // the ring's flags byte, once read
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || len(r.b) < n {
		if r.err == nil {
			r.err = fmt.Errorf("%w: truncated", ErrMalformed)
		}
		return make([]byte, n)
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() byte    { return r.bytes(1)[0] }
func (r *reader) u16() uint16 { return binary.BigEndian.Uint16(r.bytes(2)) }
func (r *reader) u32() uint32 { return binary.BigEndian.Uint32(r.bytes(4)) }
func (r *reader) u64() uint64 { return binary.BigEndian.Uint64(r.bytes(8)) }

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

// count reads a u16 count bounded by max.
func (r *reader) count(max int, what string) int {
	n := int(r.u16())
	if n > max {
		r.fail("%d %s exceeds %d", n, what, max)
		return 0
	}
	return n
}

// ParseRing decodes a ring body, refusing anything non-canonical or that
// breaks the ring invariants. It never panics.
func ParseRing(b []byte) (*Ring, error) {
	rd := &reader{b: b}
	r, pt := parseRingHead(rd, 0)
	if n := rd.count(MaxEntries, "entries"); n > 0 && rd.err == nil {
		r.Entries = make([]Entry, n)
		for i := range r.Entries {
			parseEntry(rd, &r.Entries[i], pt)
		}
	}
	parseVotesTransfers(rd, r, pt, ringTables)
	if err := parseEnd(rd, pt); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return r, nil
}

// peerTab is a parsed peer table and which of its keys were used.
type peerTab struct {
	rd   *reader
	keys []key.Public
	used []bool
}

func (pt *peerTab) peer() key.Public {
	i := int(pt.rd.u16())
	if i >= len(pt.keys) {
		pt.rd.fail("peer index %d out of table", i)
		return key.Public{}
	}
	pt.used[i] = true
	return pt.keys[i]
}

// parseRingHead reads the fixed part (flags beyond ringFlagUsed|extra
// refused) and the peer table.
func parseRingHead(rd *reader, extra byte) (*Ring, *peerTab) {
	a4 := [4]byte(rd.bytes(4))
	bits := int(rd.u8())
	pfx := netip.PrefixFrom(netip.AddrFrom4(a4), bits)
	if rd.err == nil && (!validRange(pfx) || pfx.Masked() != pfx) {
		rd.fail("bad range")
	}
	r := &Ring{Range: pfx}
	r.Seed.Peer = key.Public(rd.bytes(key.Len))
	r.Seed.ID = rd.u64()
	if (r.Seed.ID == 0) != r.Seed.Peer.IsZero() {
		rd.fail("half a seed")
	}
	rd.flags = rd.u8()
	if rd.flags&^(ringFlagUsed|extra) != 0 {
		rd.fail("unknown ring flags %#x", rd.flags)
	}
	r.Used = rd.flags&ringFlagUsed != 0
	np := rd.count(MaxPeers, "peers")
	pt := &peerTab{rd: rd, keys: make([]key.Public, np), used: make([]bool, np)}
	for i := range pt.keys {
		pt.keys[i] = key.Public(rd.bytes(key.Len))
		if i > 0 && !pt.keys[i-1].Less(pt.keys[i]) {
			rd.fail("peer table not sorted")
		}
	}
	return r, pt
}

func parseEntry(rd *reader, e *Entry, pt *peerTab) {
	e.Token = rd.u32()
	e.Owner = pt.peer()
	e.Version = rd.u32()
	e.Free = rd.u32()
	e.Writer = pt.peer()
	e.Sig = key.Signature(rd.bytes(key.SigLen))
}

// parseVotesTransfers reads the vote and transfer tables into r, within tb.
func parseVotesTransfers(rd *reader, r *Ring, pt *peerTab, tb tableBounds) {
	if n := rd.count(tb.votes, "votes"); n > 0 && rd.err == nil {
		r.Votes = make([]Vote, n)
		for i := range r.Votes {
			v := &r.Votes[i]
			v.Voter = pt.peer()
			v.Dead = pt.peer()
			v.Seq = rd.u32()
			v.Issuer = pt.peer()
			v.Sig = key.Signature(rd.bytes(key.SigLen))
			if v.Seq == 0 {
				rd.fail("vote with seq 0")
			}
			if i > 0 && rd.err == nil && cmpVote(r.Votes[i-1], *v) >= 0 {
				rd.fail("votes not sorted")
			}
		}
	}
	if n := rd.count(tb.transfers, "transfers"); n > 0 && rd.err == nil {
		r.Transfers = make([]Transfer, n)
		certs, inline := 0, 0
		for i := range r.Transfers {
			t := &r.Transfers[i]
			t.Dead = pt.peer()
			t.Issuer = pt.peer()
			f := rd.u8()
			if f&^(flagDone|flagWithdrawn) != 0 {
				rd.fail("unknown transfer flags %#x", f)
			}
			t.Done, t.Withdrawn = f&flagDone != 0, f&flagWithdrawn != 0
			t.Sig = key.Signature(rd.bytes(key.SigLen))
			nc := rd.count(tb.certVotes, "certificate votes")
			if certs += nc; certs > tb.certVotes {
				rd.fail("more than %d certificate votes", tb.certVotes)
			}
			if nc == 0 || rd.err != nil {
				continue
			}
			t.Cert = make([]CertVote, nc)
			for j := range t.Cert {
				c := &t.Cert[j]
				c.Voter = pt.peer()
				c.Seq = rd.u32()
				v, inTable := r.vote(c.Voter, t.Dead)
				inTable = inTable && v.Seq == c.Seq && v.Issuer == t.Issuer
				switch rd.u8() {
				case 0:
					if !inTable {
						rd.fail("certificate vote refers to no vote")
					}
					c.Sig = v.Sig
				case certSigInline:
					if inline++; inline > tb.certSigs {
						rd.fail("more than %d inline certificate signatures", tb.certSigs)
					}
					c.Sig = key.Signature(rd.bytes(key.SigLen))
					if inTable && v.Sig == c.Sig {
						rd.fail("certificate signature inline and in the vote table")
					}
				default:
					rd.fail("bad certificate signature flag")
				}
			}
		}
	}
	if rd.err == nil {
		for _, t := range r.Transfers {
			if t.Dead == t.Issuer {
				rd.fail("self transfer")
			}
		}
	}
}

// parseEnd checks that nothing trails and every table key was used.
func parseEnd(rd *reader, pt *peerTab) error {
	if rd.err != nil {
		return rd.err
	}
	if len(rd.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(rd.b))
	}
	if slices.Contains(pt.used, false) {
		return fmt.Errorf("%w: unused peer in table", ErrMalformed)
	}
	return nil
}

// AppendRingMessage appends a whole ring message (header and body).
func AppendRingMessage(b []byte, r *Ring) ([]byte, error) {
	return AppendRing(append(b, WireVersion, msgRing), r)
}

// AppendRequestMessage appends a space request for a network with seed s.
func AppendRequestMessage(b []byte, s Seed) []byte {
	b = append(b, WireVersion, msgRequest)
	b = append(b, s.Peer[:]...)
	return binary.BigEndian.AppendUint64(b, s.ID)
}

// Message is a decoded IPAM message: exactly one of Ring, Part, Request,
// RequestIn and Digest is set.
type Message struct {
	Ring      *Ring
	Part      *RingPart
	Request   *Seed
	RequestIn *RequestIn
	Digest    *ringDigest
}

// ParseMessage decodes one message. It never panics.
func ParseMessage(b []byte) (Message, error) {
	if len(b) > MaxMessage {
		return Message{}, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(b), MaxMessage)
	}
	if len(b) < hdrLen {
		return Message{}, fmt.Errorf("%w: short header", ErrMalformed)
	}
	if b[0] != WireVersion {
		return Message{}, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	body := b[hdrLen:]
	switch b[1] {
	case msgRing:
		r, err := ParseRing(body)
		if err != nil {
			return Message{}, err
		}
		return Message{Ring: r}, nil
	case msgRingPart, msgRingAsk:
		p, err := parseRingPart(body, b[1] == msgRingAsk)
		if err != nil {
			return Message{}, err
		}
		return Message{Part: p}, nil
	case msgRequest:
		if len(body) != requestLen {
			return Message{}, fmt.Errorf("%w: request of %d bytes", ErrMalformed, len(body))
		}
		s := Seed{Peer: key.Public(body[:key.Len]), ID: binary.BigEndian.Uint64(body[key.Len:])}
		return Message{Request: &s}, nil
	case msgRequestIn:
		r, err := parseRequestIn(body)
		if err != nil {
			return Message{}, err
		}
		return Message{RequestIn: &r}, nil
	case msgRingDigest:
		d, err := parseDigest(body)
		if err != nil {
			return Message{}, err
		}
		return Message{Digest: d}, nil
	}
	return Message{}, fmt.Errorf("%w: unknown type %d", ErrMalformed, b[1])
}
