package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// # Signalling messages
//
// ICE credentials and candidates travel on the control plane's "nat"
// channel, routed hop by hop to the other peer. One message:
//
//	 0               1               2
//	 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 …
//	+---------------+---------------+-------------------------------+
//	| version 1     | type          | session ID (8 bytes, big end.)|
//	+---------------+---------------+-------------------------------+
//	| body, by type:                                                |
//	|  1 request:   empty (the controlled side asks for a session)  |
//	|  2 offer,                                                     |
//	|  3 answer:    ufrag len (1), ufrag, pwd len (1), pwd          |
//	|  4 candidate: len (2), candidate in SDP attribute form        |
//	|  5 bye:       empty (the sender's session is over)            |
//	|  6 reflexive: n (1, ≤ 4), n × (server addr, mapped addr)      |
//	|               addr = len (1: 4 or 16) | IP | port (2)         |
//	+---------------------------------------------------------------+
//
// The controlling side (the smaller key) sends offers and picks the session
// ID; the controlled side answers. A reflexive message (session ID 0) tells
// a peer the addresses STUN through other peers showed the sender at: each
// mapped address with the STUN server (a peer) that saw it. Receivers try
// them before the listen address gossip guesses. A message of another version, an unknown
// type, or with bytes left over is dropped whole: a peer never guesses at
// what a newer one meant.
const (
	signalVersion   = 1
	signalHeaderLen = 10

	maxUfragLen     = 64  // RFC 8445 allows 4–256 characters; pion makes 16
	maxPwdLen       = 128 // pion makes 32
	maxCandidateLen = 512
	maxReflexive    = 4 // mappings per reflexive message (maxSTUNServers)
)

// SignalType is the type of a signalling message.
type SignalType uint8

const (
	SignalRequest   SignalType = 1
	SignalOffer     SignalType = 2
	SignalAnswer    SignalType = 3
	SignalCandidate SignalType = 4
	SignalBye       SignalType = 5
	SignalReflexive SignalType = 6
)

func (t SignalType) String() string {
	switch t {
	case SignalRequest:
		return "request"
	case SignalOffer:
		return "offer"
	case SignalAnswer:
		return "answer"
	case SignalCandidate:
		return "candidate"
	case SignalBye:
		return "bye"
	case SignalReflexive:
		return "reflexive"
	}
	return fmt.Sprintf("type%d", uint8(t))
}

// Signal is one signalling message.
type Signal struct {
	Type      SignalType
	Session   uint64
	Ufrag     string    // offer, answer
	Pwd       string    // offer, answer
	Candidate string    // candidate
	Reflexive []Mapping // reflexive
}

var (
	ErrSignalShort    = errors.New("nat: signal truncated")
	ErrSignalVersion  = errors.New("nat: signal of an unknown version")
	ErrSignalType     = errors.New("nat: signal of an unknown type")
	ErrSignalTrailing = errors.New("nat: bytes after the signal")
	ErrSignalField    = errors.New("nat: signal field empty or too long")
)

// AppendSignal appends s in wire form to b.
func AppendSignal(b []byte, s Signal) ([]byte, error) {
	b = append(b, signalVersion, byte(s.Type))
	b = binary.BigEndian.AppendUint64(b, s.Session)
	switch s.Type {
	case SignalRequest, SignalBye:
	case SignalOffer, SignalAnswer:
		if s.Ufrag == "" || len(s.Ufrag) > maxUfragLen || s.Pwd == "" || len(s.Pwd) > maxPwdLen {
			return b, ErrSignalField
		}
		b = append(b, byte(len(s.Ufrag)))
		b = append(b, s.Ufrag...)
		b = append(b, byte(len(s.Pwd)))
		b = append(b, s.Pwd...)
	case SignalCandidate:
		if s.Candidate == "" || len(s.Candidate) > maxCandidateLen {
			return b, ErrSignalField
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.Candidate)))
		b = append(b, s.Candidate...)
	case SignalReflexive:
		if len(s.Reflexive) > maxReflexive {
			return b, ErrSignalField
		}
		b = append(b, byte(len(s.Reflexive)))
		for _, m := range s.Reflexive {
			if !m.Server.IsValid() || !m.Mapped.IsValid() {
				return b, ErrSignalField
			}
			b = appendAddrPort(b, m.Server)
			b = appendAddrPort(b, m.Mapped)
		}
	default:
		return b, ErrSignalType
	}
	return b, nil
}

func appendAddrPort(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr().Unmap()
	b = append(b, byte(ip.BitLen()/8))
	b = append(b, ip.AsSlice()...)
	return binary.BigEndian.AppendUint16(b, a.Port())
}

// parseAddrPort parses one addr of a reflexive message from the front of b.
func parseAddrPort(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, ErrSignalShort
	}
	n := int(b[0])
	if n != 4 && n != 16 {
		return netip.AddrPort{}, nil, ErrSignalField
	}
	if len(b) < 1+n+2 {
		return netip.AddrPort{}, nil, ErrSignalShort
	}
	ip, _ := netip.AddrFromSlice(b[1 : 1+n])
	if ip.Is4In6() {
		return netip.AddrPort{}, nil, ErrSignalField // IPv4 is sent as 4 bytes
	}
	port := binary.BigEndian.Uint16(b[1+n:])
	return netip.AddrPortFrom(ip, port), b[1+n+2:], nil
}

// ParseSignal parses one signalling message.
func ParseSignal(b []byte) (Signal, error) {
	var s Signal
	if len(b) < signalHeaderLen {
		return s, ErrSignalShort
	}
	if b[0] != signalVersion {
		return s, ErrSignalVersion
	}
	s.Type = SignalType(b[1])
	s.Session = binary.BigEndian.Uint64(b[2:10])
	rest := b[signalHeaderLen:]
	str := func(n int, max int) (string, error) {
		if n == 0 || n > max {
			return "", ErrSignalField
		}
		if len(rest) < n {
			return "", ErrSignalShort
		}
		v := string(rest[:n])
		rest = rest[n:]
		return v, nil
	}
	var err error
	switch s.Type {
	case SignalRequest, SignalBye:
	case SignalOffer, SignalAnswer:
		if len(rest) < 1 {
			return s, ErrSignalShort
		}
		n := int(rest[0])
		rest = rest[1:]
		if s.Ufrag, err = str(n, maxUfragLen); err != nil {
			return s, err
		}
		if len(rest) < 1 {
			return s, ErrSignalShort
		}
		n = int(rest[0])
		rest = rest[1:]
		if s.Pwd, err = str(n, maxPwdLen); err != nil {
			return s, err
		}
	case SignalCandidate:
		if len(rest) < 2 {
			return s, ErrSignalShort
		}
		n := int(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		if s.Candidate, err = str(n, maxCandidateLen); err != nil {
			return s, err
		}
	case SignalReflexive:
		if len(rest) < 1 {
			return s, ErrSignalShort
		}
		n := int(rest[0])
		rest = rest[1:]
		if n > maxReflexive {
			return s, ErrSignalField
		}
		for range n {
			var m Mapping
			if m.Server, rest, err = parseAddrPort(rest); err != nil {
				return s, err
			}
			if m.Mapped, rest, err = parseAddrPort(rest); err != nil {
				return s, err
			}
			s.Reflexive = append(s.Reflexive, m)
		}
	default:
		return s, ErrSignalType
	}
	if len(rest) != 0 {
		return s, ErrSignalTrailing
	}
	return s, nil
}
