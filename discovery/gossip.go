package discovery

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"
	"unicode/utf8"

	"github.com/weavewg/weavewg/types/key"
)

// Wire format of the messages carried inside the Noise transport.
//
// Every transport frame decrypts to exactly one message:
//
//	+--------+-------------------------------+
//	| type 1 | body (layout fixed per type)  |
//	+--------+-------------------------------+
//
// Version rule: the major protocol version is in the Noise prologue
// ("weavewg control v2"), so peers of another major version fail the
// handshake. (v2 signed records and channel messages.) Within v2, new message types may be added: a receiver ignores a
// type it does not know and counts it (control_message_unknown_type). A known
// type has a fixed layout; a body shorter or longer than that layout is
// malformed and closes the connection (control_message_malformed). Extending
// a known message therefore means defining a new type. All integers are
// big-endian.

// Message types.
const (
	msgHello     byte = 1 // first message each way after the handshake
	msgRecords   byte = 2 // peer records: answers to digests, floods
	msgKeepalive byte = 3 // empty body; sent when a connection has been idle
	// msgChannel (4) is in channel.go, msgBusy (5) in connlimit.go,
	// msgDigest (6) in digest.go, msgHave (7) and msgWant (8) in
	// announce.go, msgSummary (9) in summary.go, msgFeatures (10) and
	// msgMulticast (11) in multicast.go.
)

// Size bounds. A record of maximal size must fit in one transport frame,
// which is what fixes MaxNeighbors.
const (
	MaxNickname  = 64   // bytes of UTF-8
	MaxAttached  = 1024 // prefixes per record
	MaxNeighbors = 896  // neighbors per record
	// MaxPeers bounds the records kept; records of further new peers are
	// ignored. It is the IPAM ring's bound on owners too (ipam.MaxPeers;
	// package sim's tests check they agree): one limit for a network.
	MaxPeers = 8192

	// maxFrame is the largest Noise transport message (2-byte length prefix).
	maxFrame = 65535
	// maxPlaintext is the largest message inside a frame (frame minus tag).
	maxPlaintext = maxFrame - 16

	maxAddrLen      = 1 + 16
	maxPrefixLen    = maxAddrLen + 1
	maxNeighborLen  = key.Len + maxAddrLen + 1
	recordFixedLen  = key.Len + 8 + 1 + 1 + 2 + 2 + 2 // without variable parts
	maxRecordLen    = recordFixedLen + MaxNickname + 16 + MaxAttached*maxPrefixLen + MaxNeighbors*maxNeighborLen
	recordsHdrLen   = 1 + 2
	maxRecordsInMsg = (maxPlaintext - recordsHdrLen) / (recordFixedLen + key.SigLen)

	// MaxVersionAhead bounds how far a record's version (unix nanoseconds
	// at its owner's last change, or one more than the last) may be ahead
	// of the receiver's clock. A record further ahead is dropped and
	// counted (gossip_records_future): a version near 2^64 would otherwise
	// make every later version of that peer lose, or wrap.
	MaxVersionAhead = time.Hour
)

// recordDomain separates record signatures from every other signature.
const recordDomain = "weavewg record v1"

// A compile-time check that one maximal record fits in one records message.
var _ [maxPlaintext - recordsHdrLen - maxRecordLen - key.SigLen]struct{}

// Neighbor is one entry of a record's neighbor list.
type Neighbor struct {
	Key key.Public
	// IP is the address the record's owner sees this neighbor at (the remote
	// IP of their control connection).
	IP          netip.Addr
	Established bool
}

// Record is what a peer says about itself in gossip. Records merge per key:
// the highest Version wins. Sig is the owner's signature (key.Sign, domain
// "weavewg record v1") over the record's encoding: a record is taken only
// from its owner, however many peers forwarded it.
type Record struct {
	Key       key.Public
	Version   uint64
	Nickname  string
	HostIP    netip.Addr
	Port      uint16
	Attached  []netip.Prefix
	Neighbors []Neighbor
	Sig       key.Signature
}

// Sign sets rec.Sig; priv must be the key of rec.Key.
func (rec *Record) Sign(priv key.Private) {
	rec.Sig = key.Sign(priv, recordDomain, AppendRecord(nil, rec))
}

// Verify checks rec.Sig against rec.Key.
func (rec *Record) Verify() error {
	return key.Verify(rec.Key, recordDomain, AppendRecord(nil, rec), &rec.Sig)
}

// Errors returned by the parsers. Every one of them means "malformed".
var (
	errShort    = errors.New("discovery: message truncated")
	errTrailing = errors.New("discovery: trailing bytes after message")
	errBadAddr  = errors.New("discovery: bad address encoding")
	errTooMany  = errors.New("discovery: list longer than its bound")
	errBadNick  = errors.New("discovery: nickname too long or not UTF-8")
	errBadFlags = errors.New("discovery: reserved flag bits set")
	errBadType  = errors.New("discovery: wrong message type")
)

// Record encoding:
//
//	+----------------------------------------------------------+
//	| key (32)                                                 |
//	| version (8)                                              |
//	| nick len (1) | nickname (≤ 64, UTF-8)                    |
//	| host IP (addr)                                           |
//	| port (2)                                                 |
//	| n attached (2, ≤ 1024) | n × ( addr | bits (1) )         |
//	| n neighbors (2, ≤ 896) | n × ( key (32) | addr | flags (1) ) |
//	+----------------------------------------------------------+
//
//	addr  = len (1: 0, 4 or 16) | address bytes (len)
//	        0 is "no address"; 16 keeps IPv4-mapped IPv6 as it is.
//	flags = bit 0: established; bits 1-7 must be zero.
//
// Bits of a prefix must not exceed its address length; the address part of a
// prefix is not required to be masked (the encoding keeps what it is given).

// AppendRecord appends the encoding of rec to b. Invalid (zero) prefixes are
// skipped; lists and the nickname are truncated to their bounds, so the
// result always parses.
func AppendRecord(b []byte, rec *Record) []byte {
	b = append(b, rec.Key[:]...)
	b = binary.BigEndian.AppendUint64(b, rec.Version)
	nick := truncateNick(rec.Nickname)
	b = append(b, byte(len(nick)))
	b = append(b, nick...)
	b = appendAddr(b, rec.HostIP)
	b = binary.BigEndian.AppendUint16(b, rec.Port)
	att := rec.Attached
	if !allValid(att) {
		att = validPrefixes(att)
	}
	if len(att) > MaxAttached {
		att = att[:MaxAttached]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(att)))
	for _, p := range att {
		b = appendAddr(b, p.Addr())
		b = append(b, byte(p.Bits()))
	}
	nb := rec.Neighbors
	if len(nb) > MaxNeighbors {
		nb = nb[:MaxNeighbors]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(nb)))
	for _, n := range nb {
		b = append(b, n.Key[:]...)
		b = appendAddr(b, n.IP)
		var flags byte
		if n.Established {
			flags |= 1
		}
		b = append(b, flags)
	}
	return b
}

// ParseRecord parses exactly one record from the whole of b.
func ParseRecord(b []byte) (Record, error) {
	rec, rest, err := parseRecord(b)
	if err != nil {
		return Record{}, err
	}
	if len(rest) != 0 {
		return Record{}, errTrailing
	}
	return rec, nil
}

// parseRecord parses one record from the front of b and returns the rest.
func parseRecord(b []byte) (rec Record, rest []byte, err error) {
	r := reader{b: b}
	copy(rec.Key[:], r.bytes(key.Len))
	rec.Version = r.u64()
	rec.Nickname, err = r.nick()
	if err != nil {
		return Record{}, nil, err
	}
	rec.HostIP = r.addr()
	rec.Port = r.u16()
	n := int(r.u16())
	if n > MaxAttached {
		return Record{}, nil, errTooMany
	}
	if n > 0 && !r.bad {
		rec.Attached = make([]netip.Prefix, 0, min(n, len(r.b)/2))
	}
	for i := 0; i < n && !r.bad; i++ {
		a := r.addr()
		bits := int(r.u8())
		if r.bad {
			break
		}
		if !a.IsValid() || bits > a.BitLen() {
			return Record{}, nil, errBadAddr
		}
		rec.Attached = append(rec.Attached, netip.PrefixFrom(a, bits))
	}
	n = int(r.u16())
	if n > MaxNeighbors {
		return Record{}, nil, errTooMany
	}
	if n > 0 && !r.bad {
		rec.Neighbors = make([]Neighbor, 0, min(n, len(r.b)/(key.Len+2)))
	}
	for i := 0; i < n && !r.bad; i++ {
		var nb Neighbor
		copy(nb.Key[:], r.bytes(key.Len))
		nb.IP = r.addr()
		flags := r.u8()
		if flags&^1 != 0 {
			return Record{}, nil, errBadFlags
		}
		nb.Established = flags&1 != 0
		rec.Neighbors = append(rec.Neighbors, nb)
	}
	if r.err != nil {
		return Record{}, nil, r.err
	}
	return rec, r.b, nil
}

// Records message:
//
//	+----------------+-----------+---------------------------------------------+
//	| type = 2 (1)   | count (2) | count × ( record (above) | signature (64) ) |
//	+----------------+-----------+---------------------------------------------+
//
// The signature is the record owner's (Record.Sign); the message parses
// without checking it, the router checks it before merging.

// AppendRecordsMessage appends one records message holding recs to b. The
// caller keeps the result within maxPlaintext (see packRecords).
func AppendRecordsMessage(b []byte, recs []*Record) []byte {
	b = append(b, msgRecords)
	b = binary.BigEndian.AppendUint16(b, uint16(len(recs)))
	for _, rec := range recs {
		b = AppendRecord(b, rec)
		b = append(b, rec.Sig[:]...)
	}
	return b
}

// ParseRecordsMessage parses a whole records message, type byte included.
func ParseRecordsMessage(b []byte) ([]Record, error) {
	if len(b) < recordsHdrLen {
		return nil, errShort
	}
	if b[0] != msgRecords {
		return nil, errBadType
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	if n > maxRecordsInMsg {
		return nil, errTooMany
	}
	b = b[3:]
	recs := make([]Record, 0, min(n, len(b)/(recordFixedLen+key.SigLen)))
	for range n {
		rec, rest, err := parseRecord(b)
		if err != nil {
			return nil, err
		}
		if len(rest) < key.SigLen {
			return nil, errShort
		}
		copy(rec.Sig[:], rest)
		recs = append(recs, rec)
		b = rest[key.SigLen:]
	}
	if len(b) != 0 {
		return nil, errTrailing
	}
	return recs, nil
}

// packRecords encodes recs into as few records messages as fit in frames.
func packRecords(recs []*Record) [][]byte {
	var msgs [][]byte
	var cur []*Record
	size := recordsHdrLen
	var scratch []byte
	for _, rec := range recs {
		scratch = AppendRecord(scratch[:0], rec)
		scratch = append(scratch, rec.Sig[:]...)
		if len(cur) > 0 && (size+len(scratch) > maxPlaintext || len(cur) == 65535) {
			msgs = append(msgs, AppendRecordsMessage(make([]byte, 0, size), cur))
			cur, size = nil, recordsHdrLen
		}
		cur = append(cur, rec)
		size += len(scratch)
	}
	if len(cur) > 0 {
		msgs = append(msgs, AppendRecordsMessage(make([]byte, 0, size), cur))
	}
	return msgs
}

// Hello message, the first message each side sends after the handshake:
//
//	+--------------+----------+--------------------+---------------+----------+
//	| type = 1 (1) | port (2) | record version (8) | nick len (1)  | nickname |
//	+--------------+----------+--------------------+---------------+----------+
//
// port is the sender's advertised control/WireGuard port; record version is
// the version of the sender's own record at the time of sending.

// Hello is the content of a hello message.
type Hello struct {
	Port          uint16
	RecordVersion uint64
	Nickname      string
}

// AppendHello appends a hello message, type byte included.
func AppendHello(b []byte, h *Hello) []byte {
	b = append(b, msgHello)
	b = binary.BigEndian.AppendUint16(b, h.Port)
	b = binary.BigEndian.AppendUint64(b, h.RecordVersion)
	nick := truncateNick(h.Nickname)
	b = append(b, byte(len(nick)))
	return append(b, nick...)
}

// ParseHello parses a whole hello message, type byte included.
func ParseHello(b []byte) (Hello, error) {
	r := reader{b: b}
	if t := r.u8(); !r.bad && t != msgHello {
		return Hello{}, errBadType
	}
	var h Hello
	h.Port = r.u16()
	h.RecordVersion = r.u64()
	nick, err := r.nick()
	if err != nil {
		return Hello{}, err
	}
	h.Nickname = nick
	if r.err != nil {
		return Hello{}, r.err
	}
	if len(r.b) != 0 {
		return Hello{}, errTrailing
	}
	return h, nil
}

// truncateNick bounds s to MaxNickname bytes without splitting a rune, and
// replaces invalid UTF-8.
func truncateNick(s string) string {
	if !utf8.ValidString(s) {
		s = string([]rune(s)) // replaces invalid bytes with U+FFFD
	}
	if len(s) <= MaxNickname {
		return s
	}
	i := MaxNickname
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

func allValid(ps []netip.Prefix) bool {
	for _, p := range ps {
		if !p.IsValid() {
			return false
		}
	}
	return true
}

func validPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

func appendAddr(b []byte, a netip.Addr) []byte {
	if !a.IsValid() {
		return append(b, 0)
	}
	a = a.WithZone("")
	s := a.AsSlice()
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// reader is a bounds-checked cursor. After the first short read every read
// returns zero values and err is set, so parsers check once at the end.
type reader struct {
	b   []byte
	bad bool
	err error
}

func (r *reader) fail(err error) {
	if !r.bad {
		r.bad, r.err = true, err
	}
	r.b = nil
}

func (r *reader) bytes(n int) []byte {
	if r.bad || len(r.b) < n {
		r.fail(errShort)
		return make([]byte, n)
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() byte { return r.bytes(1)[0] }

func (r *reader) u16() uint16 { return binary.BigEndian.Uint16(r.bytes(2)) }

func (r *reader) u64() uint64 { return binary.BigEndian.Uint64(r.bytes(8)) }

func (r *reader) addr() netip.Addr {
	n := int(r.u8())
	switch n {
	case 0:
		return netip.Addr{}
	case 4, 16:
		a, _ := netip.AddrFromSlice(r.bytes(n))
		if r.bad {
			return netip.Addr{}
		}
		return a
	default:
		r.fail(errBadAddr)
		return netip.Addr{}
	}
}

func (r *reader) nick() (string, error) {
	n := int(r.u8())
	if n > MaxNickname {
		return "", errBadNick
	}
	s := string(r.bytes(n))
	if r.bad {
		return "", r.err
	}
	if !utf8.ValidString(s) {
		return "", errBadNick
	}
	return s, nil
}
