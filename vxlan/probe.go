package vxlan

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net"

	"golang.org/x/crypto/blake2s"

	"github.com/weavewg/weavewg/types/key"
)

// # Probe frames
//
// A probe is an Ethernet frame sent through the VXLAN device itself, so an
// answer proves that encapsulated frames flow both ways between the pair:
// the kernel encapsulates it to the peer's underlay address (the FDB entry
// for the peer's MAC), the peer's kernel decapsulates it and hands it to
// the daemon's packet socket, which answers the same way. Its EtherType is
// 0x88B5 (IEEE 802 local experimental), which no other protocol uses:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       magic "WWVX"                            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  version 1    | type 1 or 2   |        reserved, zero         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          timestamp: the prober's clock, unix ns (8)           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   MAC: keyed BLAKE2s-128 (16 bytes), see frameMAC             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Type 1 is a probe, 2 the answer, which echoes the timestamp so the prober
// measures the round trip with its own clock. The MAC covers the first 16
// bytes and the frame's source and destination Ethernet addresses, keyed
// from the network secret, so a host of the trusted subnet that is not a
// member cannot make a peer look reachable. Bytes after the 32 (Ethernet
// padding) are ignored.
const (
	EtherType = 0x88B5

	frameLen     = 32
	frameVersion = 1

	TypeProbe = 1
	TypeReply = 2
)

var frameMagic = [4]byte{'W', 'W', 'V', 'X'}

// Frame errors.
var (
	ErrShort   = errors.New("vxlan probe: frame too short")
	ErrMagic   = errors.New("vxlan probe: not a weavewg probe")
	ErrVersion = errors.New("vxlan probe: unknown version")
	ErrType    = errors.New("vxlan probe: unknown type")
	ErrMAC     = errors.New("vxlan probe: bad MAC")
)

// probeKey derives the frame MAC key from the network secret.
func probeKey(s key.Secret) [32]byte {
	return blake2s.Sum256(append([]byte("weavewg vxlan probe v1\x00"), s[:]...))
}

func frameMAC(k *[32]byte, head []byte, src, dst net.HardwareAddr) [16]byte {
	h, _ := blake2s.New128(k[:])
	h.Write(head[:16])
	h.Write(src)
	h.Write(dst)
	var m [16]byte
	h.Sum(m[:0])
	return m
}

// appendFrame appends a probe or reply sent from src to dst.
func appendFrame(b []byte, k *[32]byte, typ byte, ts int64, src, dst net.HardwareAddr) []byte {
	start := len(b)
	b = append(b, frameMagic[:]...)
	b = append(b, frameVersion, typ, 0, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(ts))
	m := frameMAC(k, b[start:], src, dst)
	return append(b, m[:]...)
}

// parseFrame checks a frame received from src addressed to dst and returns
// its type and timestamp.
func parseFrame(b []byte, k *[32]byte, src, dst net.HardwareAddr) (typ byte, ts int64, err error) {
	switch {
	case len(b) < frameLen:
		return 0, 0, ErrShort
	case [4]byte(b[:4]) != frameMagic:
		return 0, 0, ErrMagic
	case b[4] != frameVersion:
		return 0, 0, ErrVersion
	case b[5] != TypeProbe && b[5] != TypeReply:
		return 0, 0, ErrType
	}
	m := frameMAC(k, b, src, dst)
	if subtle.ConstantTimeCompare(m[:], b[16:32]) != 1 {
		return 0, 0, ErrMAC
	}
	return b[5], int64(binary.BigEndian.Uint64(b[8:16])), nil
}

// MACOf is the VXLAN device's Ethernet address of the peer with key k: the
// same on every host, so peers need not tell each other. It is locally
// administered and unicast.
func MACOf(k key.Public) net.HardwareAddr {
	h := blake2s.Sum256(append([]byte("weavewg vxlan mac\x00"), k[:]...))
	mac := net.HardwareAddr(h[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// VNIOf is the VXLAN network identifier of the network with secret s: 24
// bits derived from it, so datagrams of another weavewg network (or any
// other VXLAN user) sent to the same port are dropped by the kernel rather
// than delivered. 0 is avoided.
func VNIOf(s key.Secret) uint32 {
	h := blake2s.Sum256(append([]byte("weavewg vxlan vni\x00"), s[:]...))
	v := uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2])
	if v == 0 {
		v = 1
	}
	return v
}
