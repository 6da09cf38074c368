package dns

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/weavewg/weavewg/types/key"
)

// Gossip wire format of the name table (the "dns" channel).
//
// Every message:
//
//	 0        1        2                 4
//	+--------+--------+-----------------+---------------------------+
//	| ver=1  | type   | count (2)       | count × entry             |
//	+--------+--------+-----------------+---------------------------+
//
//	type 1 = update: entries that just changed (sent at once)
//	type 2 = state:  one chunk of a peer's whole table (anti-entropy)
//
// Both types merge the same way; they differ only in counters. Entry:
//
//	+-----------------------------------------------------------+
//	| owner key (32)                                            |
//	| version (8)                                               |
//	| flags (1): bit 0 tombstone; bits 1-7 must be zero          |
//	| addr len (1: 4 or 16) | addr                              |
//	| name len (1: 1..200)  | name (lower-case host name)       |
//	| origin len (1: 0..128) | origin (UTF-8)                   |
//	+-----------------------------------------------------------+
//
// All integers are big-endian. Version rule: a message whose first byte is
// not 1 is rejected (ErrVersion), so a later incompatible format must use a
// new version byte. With version 1, a type this code does not know is ignored
// and counted (ErrUnknownType) so new types can be added. A known type has
// exactly the layout above: short bodies, trailing bytes, reserved flag bits
// or invalid names/addresses are malformed. A message is at most
// MaxMessageLen bytes and holds at most MaxEntriesPerMessage entries.

// Wire constants.
const (
	wireVersion byte = 1

	MsgUpdate byte = 1
	MsgState  byte = 2

	hdrLen        = 4
	entryFixedLen = key.Len + 8 + 1 + 1 + 1 + 1 // without addr, name, origin bytes
	minEntryLen   = entryFixedLen + 4 + 1
	maxEntryLen   = entryFixedLen + 16 + MaxNameLen + MaxOriginLen
	flagTombstone = 1
	reservedFlags = ^byte(flagTombstone)

	// MaxMessageLen bounds one gossip message, so it fits one control frame
	// (64 KiB) with room for the channel's own header.
	MaxMessageLen = 60 * 1024
	// MaxEntriesPerMessage is fixed by the smallest entry.
	MaxEntriesPerMessage = (MaxMessageLen - hdrLen) / minEntryLen
)

// One maximal entry always fits in a message.
var _ [MaxMessageLen - hdrLen - maxEntryLen]struct{}

// Parse errors. ErrVersion and ErrUnknownType are not "malformed": the sender
// may simply be newer.
var (
	ErrVersion     = errors.New("dns: unknown gossip version")
	ErrUnknownType = errors.New("dns: unknown gossip message type")
	ErrMalformed   = errors.New("dns: malformed gossip message")
)

// AppendEntry appends the encoding of e to b. e must be valid (see
// Table.Add); an invalid entry would not parse back.
func AppendEntry(b []byte, e *Entry) []byte {
	b = append(b, e.Owner[:]...)
	b = binary.BigEndian.AppendUint64(b, e.Version)
	var flags byte
	if e.Tombstone {
		flags |= flagTombstone
	}
	b = append(b, flags)
	a := e.Addr.AsSlice()
	b = append(b, byte(len(a)))
	b = append(b, a...)
	b = append(b, byte(len(e.Name)))
	b = append(b, e.Name...)
	b = append(b, byte(len(e.Origin)))
	b = append(b, e.Origin...)
	return b
}

// entryLen is the encoded length of e.
func entryLen(e *Entry) int {
	return entryFixedLen + e.Addr.BitLen()/8 + len(e.Name) + len(e.Origin)
}

// AppendMessage appends one message of type typ holding entries to b. The
// caller keeps len(entries) ≤ MaxEntriesPerMessage and the total within
// MaxMessageLen (AppendMessages does the splitting).
func AppendMessage(b []byte, typ byte, entries []Entry) []byte {
	b = append(b, wireVersion, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(entries)))
	for i := range entries {
		b = AppendEntry(b, &entries[i])
	}
	return b
}

// AppendMessages splits entries into as few messages of type typ as fit the
// bounds. It returns nil for no entries.
func AppendMessages(typ byte, entries []Entry) [][]byte {
	var msgs [][]byte
	for len(entries) > 0 {
		size, n := hdrLen, 0
		for n < len(entries) && n < MaxEntriesPerMessage {
			l := entryLen(&entries[n])
			if size+l > MaxMessageLen {
				break
			}
			size += l
			n++
		}
		msgs = append(msgs, AppendMessage(make([]byte, 0, size), typ, entries[:n]))
		entries = entries[n:]
	}
	return msgs
}

// ParseMessage parses one whole message. Names and origins in the result do
// not alias b.
func ParseMessage(b []byte) (typ byte, entries []Entry, err error) {
	if len(b) < hdrLen {
		return 0, nil, ErrMalformed
	}
	if b[0] != wireVersion {
		return 0, nil, ErrVersion
	}
	typ = b[1]
	if typ != MsgUpdate && typ != MsgState {
		return typ, nil, ErrUnknownType
	}
	if len(b) > MaxMessageLen {
		return typ, nil, ErrMalformed
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if n > MaxEntriesPerMessage || n*minEntryLen > len(b)-hdrLen {
		return typ, nil, ErrMalformed
	}
	b = b[hdrLen:]
	entries = make([]Entry, 0, n)
	for range n {
		var e Entry
		e, b, err = parseEntry(b)
		if err != nil {
			return typ, nil, err
		}
		entries = append(entries, e)
	}
	if len(b) != 0 {
		return typ, nil, ErrMalformed
	}
	return typ, entries, nil
}

// ParseEntry parses exactly one entry from the whole of b.
func ParseEntry(b []byte) (Entry, error) {
	e, rest, err := parseEntry(b)
	if err != nil {
		return Entry{}, err
	}
	if len(rest) != 0 {
		return Entry{}, ErrMalformed
	}
	return e, nil
}

func parseEntry(b []byte) (e Entry, rest []byte, err error) {
	if len(b) < key.Len+8+1+1 {
		return Entry{}, nil, ErrMalformed
	}
	copy(e.Owner[:], b)
	b = b[key.Len:]
	e.Version = binary.BigEndian.Uint64(b)
	flags := b[8]
	if flags&reservedFlags != 0 {
		return Entry{}, nil, ErrMalformed
	}
	e.Tombstone = flags&flagTombstone != 0
	alen := int(b[9])
	b = b[10:]
	if (alen != 4 && alen != 16) || len(b) < alen+1 {
		return Entry{}, nil, ErrMalformed
	}
	e.Addr, _ = netip.AddrFromSlice(b[:alen])
	b = b[alen:]
	nlen := int(b[0])
	b = b[1:]
	if len(b) < nlen+1 {
		return Entry{}, nil, ErrMalformed
	}
	e.Name = string(b[:nlen])
	b = b[nlen:]
	olen := int(b[0])
	b = b[1:]
	if len(b) < olen {
		return Entry{}, nil, ErrMalformed
	}
	e.Origin = string(b[:olen])
	b = b[olen:]
	if e.valid() != nil {
		return Entry{}, nil, ErrMalformed
	}
	return e, b, nil
}
