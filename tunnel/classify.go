package tunnel

import "encoding/binary"

// Every datagram that arrives on the shared UDP port is sorted by its first
// bytes into one of four kinds. The checks run in this order, and the order
// matters:
//
//  1. WireGuard. The first four bytes are the message type as a little-endian
//     uint32: 1 (handshake initiation), 2 (handshake response), 3 (cookie
//     reply) or 4 (transport data), so byte 0 is 1–4 and bytes 1–3 are zero.
//     The size must also be right for the type: exactly 148, 92 and 64 bytes
//     for types 1–3, at least 32 for transport (16 bytes of header and the
//     16-byte Poly1305 tag of an empty keepalive).
//  2. STUN (RFC 5389 section 6): the two top bits of byte 0 are zero, bytes
//     4–7 are the magic cookie 0x2112A442, the message length at bytes 2–3 is
//     a multiple of 4 and equals the datagram size minus the 20-byte header.
//  3. Relay frames (see below).
//  4. Anything else is junk and is dropped.
//
// WireGuard is tested first because it cannot be told apart from STUN by
// looking at the cookie alone: a transport message carries the 32-bit
// receiver index at bytes 4–7, the very place of the STUN magic cookie, and
// that index is a random number chosen by the receiving peer. One in 2³² of
// our own sessions would otherwise have every packet taken for STUN. STUN's
// length rule would catch most such packets, but WireGuard's own rules are
// strict and cheap, so they decide first and STUN only sees the rest.
//
// # Relay frames
//
// A relay frame starts with a two-byte prefix:
//
//	 0                   1
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| magic 0xF7    | version 2     |  rest of the relay header, then payload
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The magic byte 0xF7 has its top two bits set, so a relay frame is never
// STUN (top bits 00) and never WireGuard (byte 0 is 1–4). The rest of the
// header (destination peer, source peer, hop limit, hop counter and MAC) belongs to the relay code
// that will parse it; it must be at least RelayMinLen bytes in all. A frame
// with another version byte is junk: a receiver drops versions it does not
// know rather than guessing.

// Kind is the verdict of Classify.
type Kind uint8

const (
	KindJunk      Kind = iota // none of the below: dropped
	KindWireGuard             // a WireGuard message: handed to wireguard-go
	KindSTUN                  // a STUN message (ICE, NAT discovery)
	KindRelay                 // a relay frame
	numKinds
)

func (k Kind) String() string {
	switch k {
	case KindWireGuard:
		return "wireguard"
	case KindSTUN:
		return "stun"
	case KindRelay:
		return "relay"
	}
	return "junk"
}

// WireGuard message types and sizes (device/noise-protocol.go in wireguard-go).
const (
	wgTypeInitiation = 1
	wgTypeResponse   = 2
	wgTypeCookie     = 3
	wgTypeTransport  = 4

	wgSizeInitiation   = 148
	wgSizeResponse     = 92
	wgSizeCookie       = 64
	wgMinSizeTransport = 32 // 16-byte header + 16-byte tag (a keepalive)
)

// STUN header (RFC 5389 section 6).
const (
	stunHeaderLen   = 20
	stunMagicCookie = 0x2112A442
)

// Relay frame prefix; see the comment above.
const (
	RelayMagic   = 0xF7
	RelayVersion = 2
	// RelayMinLen is the shortest frame taken for a relay frame: the 2-byte
	// prefix, type and hop limit, 8-byte destination and 8-byte source peer
	// identifiers, the 8-byte hop counter and the 8-byte hop MAC.
	RelayMinLen = 36
)

// Classify sorts one datagram. It does not allocate and never panics.
func Classify(b []byte) Kind {
	if isWireGuard(b) {
		return KindWireGuard
	}
	if isSTUN(b) {
		return KindSTUN
	}
	if isRelay(b) {
		return KindRelay
	}
	return KindJunk
}

func isWireGuard(b []byte) bool {
	if len(b) < 4 || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return false
	}
	switch b[0] {
	case wgTypeInitiation:
		return len(b) == wgSizeInitiation
	case wgTypeResponse:
		return len(b) == wgSizeResponse
	case wgTypeCookie:
		return len(b) == wgSizeCookie
	case wgTypeTransport:
		return len(b) >= wgMinSizeTransport
	}
	return false
}

func isSTUN(b []byte) bool {
	if len(b) < stunHeaderLen || b[0]&0xC0 != 0 {
		return false
	}
	if binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie {
		return false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	return n%4 == 0 && n == len(b)-stunHeaderLen
}

func isRelay(b []byte) bool {
	return len(b) >= RelayMinLen && b[0] == RelayMagic && b[1] == RelayVersion
}
