package nat

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"
)

// # STUN (RFC 5389)
//
// Only what the mesh needs: parsing any message far enough to route it, and
// answering Binding requests. A message is a 20-byte header and attributes:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|0 0|     STUN Message Type     |         Message Length        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                   Magic Cookie 0x2112A442                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                  Transaction ID (96 bits)                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Attribute Type               |  Attribute Length             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Value, padded to a multiple of 4 bytes …                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The length excludes the header and is a multiple of 4; attributes must
// fill it exactly (a truncated attribute makes the message malformed).
// FINGERPRINT, if present, must be last (section 15.5). The Binding
// response of the responder carries XOR-MAPPED-ADDRESS (section 15.2) and
// FINGERPRINT.
const (
	stunHeaderLen   = 20
	stunMagicCookie = 0x2112A442
	stunFingerXOR   = 0x5354554e // "STUN", XORed into the FINGERPRINT CRC

	stunBindingRequest  = 0x0001
	stunBindingSuccess  = 0x0101
	stunBindingError    = 0x0111
	stunBindingIndicate = 0x0011

	attrUsername         = 0x0006
	attrMessageIntegrity = 0x0008
	attrXORMappedAddress = 0x0020
	attrFingerprint      = 0x8028

	// maxSTUNAttrs bounds the attribute walk, so a message of many empty
	// attributes costs little.
	maxSTUNAttrs = 64
)

// STUN classes (RFC 5389 section 6: bits C1 and C0 of the type).
const (
	classRequest    = 0
	classIndication = 1
	classSuccess    = 2
	classError      = 3
)

var (
	ErrNotSTUN          = errors.New("nat: not a STUN message")
	ErrSTUNTruncated    = errors.New("nat: STUN attribute truncated")
	ErrSTUNTooManyAttrs = errors.New("nat: too many STUN attributes")
	ErrSTUNFingerprint  = errors.New("nat: STUN fingerprint wrong or not last")
)

// stunMsg is a parsed STUN message. Slices alias the packet.
type stunMsg struct {
	typ          uint16
	txID         [12]byte
	username     []byte // nil: no USERNAME
	hasIntegrity bool
	hasFinger    bool
}

func (m *stunMsg) class() int {
	return int((m.typ>>7)&2 | (m.typ>>4)&1)
}

func (m *stunMsg) method() uint16 {
	return m.typ&0x000F | (m.typ&0x00E0)>>1 | (m.typ&0x3E00)>>2
}

// ufrag is the part of USERNAME before the colon: in an ICE check, the
// receiver's ufrag (RFC 8445 section 7.2.2).
func (m *stunMsg) ufrag() string {
	for i, c := range m.username {
		if c == ':' {
			return string(m.username[:i])
		}
	}
	return string(m.username)
}

// parseSTUN parses b. It never panics and does not allocate.
func parseSTUN(b []byte) (stunMsg, error) {
	var m stunMsg
	if len(b) < stunHeaderLen || b[0]&0xC0 != 0 || binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie {
		return m, ErrNotSTUN
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 || n != len(b)-stunHeaderLen {
		return m, ErrNotSTUN
	}
	m.typ = binary.BigEndian.Uint16(b[0:2])
	copy(m.txID[:], b[8:20])
	rest := b[stunHeaderLen:]
	off := stunHeaderLen
	for i := 0; len(rest) > 0; i++ {
		if i == maxSTUNAttrs {
			return m, ErrSTUNTooManyAttrs
		}
		if len(rest) < 4 {
			return m, ErrSTUNTruncated
		}
		at := binary.BigEndian.Uint16(rest[0:2])
		al := int(binary.BigEndian.Uint16(rest[2:4]))
		padded := (al + 3) &^ 3
		if 4+padded > len(rest) {
			return m, ErrSTUNTruncated
		}
		if m.hasFinger {
			return m, ErrSTUNFingerprint // something after FINGERPRINT
		}
		v := rest[4 : 4+al]
		switch at {
		case attrUsername:
			m.username = v
		case attrMessageIntegrity:
			m.hasIntegrity = true
		case attrFingerprint:
			if al != 4 || binary.BigEndian.Uint32(v) != crc32.ChecksumIEEE(b[:off])^stunFingerXOR {
				return m, ErrSTUNFingerprint
			}
			m.hasFinger = true
		}
		rest = rest[4+padded:]
		off += 4 + padded
	}
	return m, nil
}

// appendBindingResponse appends a Binding success response to the request
// with transaction ID txID, telling the requester it was seen at addr.
func appendBindingResponse(b []byte, txID [12]byte, addr netip.AddrPort) []byte {
	start := len(b)
	a := addr.Addr().Unmap()
	alen := 8
	if a.Is6() {
		alen = 20
	}
	b = binary.BigEndian.AppendUint16(b, stunBindingSuccess)
	b = binary.BigEndian.AppendUint16(b, uint16(4+alen+8))
	b = binary.BigEndian.AppendUint32(b, stunMagicCookie)
	b = append(b, txID[:]...)
	b = binary.BigEndian.AppendUint16(b, attrXORMappedAddress)
	b = binary.BigEndian.AppendUint16(b, uint16(alen))
	b = append(b, 0)
	if a.Is6() {
		b = append(b, 2)
	} else {
		b = append(b, 1)
	}
	b = binary.BigEndian.AppendUint16(b, addr.Port()^uint16(stunMagicCookie>>16))
	var mask [16]byte
	binary.BigEndian.PutUint32(mask[0:4], stunMagicCookie)
	copy(mask[4:], txID[:])
	ab := a.AsSlice()
	for i := range ab {
		b = append(b, ab[i]^mask[i])
	}
	return appendFingerprint(b, start)
}

// appendFingerprint appends FINGERPRINT to the message that starts at
// b[start:], whose length field must already count it.
func appendFingerprint(b []byte, start int) []byte {
	crc := crc32.ChecksumIEEE(b[start:]) ^ stunFingerXOR
	b = binary.BigEndian.AppendUint16(b, attrFingerprint)
	b = binary.BigEndian.AppendUint16(b, 4)
	return binary.BigEndian.AppendUint32(b, crc)
}

// appendBindingRequest appends a plain Binding request (no attributes but
// FINGERPRINT), as a STUN client asking for its mapped address sends.
func appendBindingRequest(b []byte, txID [12]byte) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint16(b, stunBindingRequest)
	b = binary.BigEndian.AppendUint16(b, 8)
	b = binary.BigEndian.AppendUint32(b, stunMagicCookie)
	b = append(b, txID[:]...)
	return appendFingerprint(b, start)
}

// parseXORMappedAddress returns the XOR-MAPPED-ADDRESS of a Binding
// response.
func parseXORMappedAddress(b []byte) (netip.AddrPort, bool) {
	if _, err := parseSTUN(b); err != nil {
		return netip.AddrPort{}, false
	}
	rest := b[stunHeaderLen:]
	for len(rest) >= 4 {
		at := binary.BigEndian.Uint16(rest[0:2])
		al := int(binary.BigEndian.Uint16(rest[2:4]))
		padded := (al + 3) &^ 3
		v := rest[4 : 4+al]
		if at == attrXORMappedAddress && (al == 8 || al == 20) {
			port := binary.BigEndian.Uint16(v[2:4]) ^ uint16(stunMagicCookie>>16)
			var mask [16]byte
			binary.BigEndian.PutUint32(mask[0:4], stunMagicCookie)
			copy(mask[4:], b[8:20])
			ab := make([]byte, al-4)
			for i := range ab {
				ab[i] = v[4+i] ^ mask[i]
			}
			a, ok := netip.AddrFromSlice(ab)
			return netip.AddrPortFrom(a, port), ok
		}
		rest = rest[4+padded:]
	}
	return netip.AddrPort{}, false
}
