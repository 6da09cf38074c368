package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
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
//	+---------------------------------------------------------------+
//
// The controlling side (the smaller key) sends offers and picks the session
// ID; the controlled side answers. A message of another version, an unknown
// type, or with bytes left over is dropped whole: a peer never guesses at
// what a newer one meant.
const (
	signalVersion   = 1
	signalHeaderLen = 10

	maxUfragLen     = 64  // RFC 8445 allows 4–256 characters; pion makes 16
	maxPwdLen       = 128 // pion makes 32
	maxCandidateLen = 512
)

// SignalType is the type of a signalling message.
type SignalType uint8

const (
	SignalRequest   SignalType = 1
	SignalOffer     SignalType = 2
	SignalAnswer    SignalType = 3
	SignalCandidate SignalType = 4
	SignalBye       SignalType = 5
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
	}
	return fmt.Sprintf("type%d", uint8(t))
}

// Signal is one signalling message.
type Signal struct {
	Type      SignalType
	Session   uint64
	Ufrag     string // offer, answer
	Pwd       string // offer, answer
	Candidate string // candidate
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
	default:
		return b, ErrSignalType
	}
	return b, nil
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
	default:
		return s, ErrSignalType
	}
	if len(rest) != 0 {
		return s, ErrSignalTrailing
	}
	return s, nil
}
