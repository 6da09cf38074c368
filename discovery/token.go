package discovery

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/weavewg/weavewg/types/key"
)

// A join token lets a new host into a network without giving it the
// network's secret in advance, and without any server: every member can
// check a token, because every member knows the secret it was made from.
//
// On the wire (before the text encoding):
//
//	+---------+------------+----------+------------+--------+--------------+
//	| ver 1   | network 8  | token 8  | expiry 8   | uses 2 | join key 32  |
//	+---------+------------+----------+------------+--------+--------------+
//	| n 1 | n × endpoint: family 1 (4|6), addr 4|16, port 2, public key 32 |
//	+---------------------------------------------------------+------------+
//	|                                                         | check 4    |
//	+---------------------------------------------------------+------------+
//
// network is NetworkID(secret); token is random; expiry is Unix seconds (0:
// never); uses is how many hosts it admits (0: any number); the join key is
// a MAC, keyed by the network secret, over network, token, expiry and uses,
// so no field can be changed without a member noticing, and the secret
// itself never leaves the network. check is the first four bytes of
// BLAKE2s-256 of everything before it: a mistyped token is caught before any
// traffic. The text form is "wwg1-" followed by unpadded base64url.
//
// Version rule: a parser refuses versions it does not know.

// TokenPrefix starts every token's text form.
const TokenPrefix = "wwg1-"

const (
	tokenVersion      = 1
	tokenFixedLen     = 1 + 8 + 8 + 8 + 2 + key.Len + 1
	tokenCheckLen     = 4
	maxTokenEndpoints = 8
	maxTokenLen       = tokenFixedLen + maxTokenEndpoints*(1+16+2+key.Len) + tokenCheckLen
)

// Token errors. Each is one sentence a user can act on.
var (
	ErrTokenFormat   = errors.New("this is not a weavewg join token (it should start with " + TokenPrefix + "); copy the whole line printed by 'weavewg token create' or 'weavewg launch'")
	ErrTokenChecksum = errors.New("the token is damaged (its checksum does not match): a character was changed, added or lost when copying it; copy it again")
	ErrTokenVersion  = errors.New("the token was made by a newer weavewg; upgrade this one")
	ErrTokenExpired  = errors.New("the token has expired; ask a member for a new one ('weavewg token create')")
)

// NetworkID names a network: a hash of its secret, safe to show.
type NetworkID [8]byte

func (n NetworkID) String() string { return fmt.Sprintf("%x", n[:]) }

// IDOf returns the network ID of a secret.
func IDOf(s key.Secret) NetworkID {
	h := blake2s.Sum256(append([]byte("weavewg network id v1\x00"), s[:]...))
	var n NetworkID
	copy(n[:], h[:8])
	return n
}

// TokenID names one token; shown by token list, given to token revoke.
type TokenID [8]byte

func (t TokenID) String() string { return fmt.Sprintf("%x", t[:]) }

// ParseTokenID parses the hex form.
func ParseTokenID(s string) (TokenID, error) {
	var t TokenID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(t) {
		return t, fmt.Errorf("token ID %q: want 16 hex digits (see 'weavewg token list')", s)
	}
	copy(t[:], b)
	return t, nil
}

// Bootstrap is a member a joiner may contact, with the key it must prove.
type Bootstrap struct {
	Addr netip.AddrPort
	Key  key.Public
}

// Token is a parsed join token.
type Token struct {
	Network   NetworkID
	ID        TokenID
	Expiry    time.Time // zero: never
	Uses      uint16    // 0: any number
	JoinKey   [32]byte
	Endpoints []Bootstrap
}

// JoinKey derives a token's join key from the network secret.
func JoinKey(secret key.Secret, network NetworkID, id TokenID, expiry time.Time, uses uint16) [32]byte {
	mac, _ := blake2s.New256(secret[:])
	mac.Write([]byte("weavewg join key v1\x00"))
	mac.Write(network[:])
	mac.Write(id[:])
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], unixOrZero(expiry))
	binary.BigEndian.PutUint16(b[8:], uses)
	mac.Write(b[:])
	var k [32]byte
	copy(k[:], mac.Sum(nil))
	return k
}

func unixOrZero(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.Unix())
}

// Expired reports whether t may no longer be used at now.
func (t Token) Expired(now time.Time) bool { return !t.Expiry.IsZero() && !now.Before(t.Expiry) }

// AppendToken appends t's binary form (with checksum) to b.
func AppendToken(b []byte, t Token) ([]byte, error) {
	if len(t.Endpoints) == 0 || len(t.Endpoints) > maxTokenEndpoints {
		return b, fmt.Errorf("a token needs 1-%d endpoints, not %d", maxTokenEndpoints, len(t.Endpoints))
	}
	start := len(b)
	b = append(b, tokenVersion)
	b = append(b, t.Network[:]...)
	b = append(b, t.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, unixOrZero(t.Expiry))
	b = binary.BigEndian.AppendUint16(b, t.Uses)
	b = append(b, t.JoinKey[:]...)
	b = append(b, byte(len(t.Endpoints)))
	for _, e := range t.Endpoints {
		a := e.Addr.Addr().Unmap()
		if a.Is4() {
			b = append(b, 4)
		} else {
			b = append(b, 6)
		}
		b = append(b, a.AsSlice()...)
		b = binary.BigEndian.AppendUint16(b, e.Addr.Port())
		b = append(b, e.Key[:]...)
	}
	sum := blake2s.Sum256(b[start:])
	return append(b, sum[:tokenCheckLen]...), nil
}

// ParseTokenBytes parses the binary form.
func ParseTokenBytes(b []byte) (Token, error) {
	var t Token
	if len(b) < tokenFixedLen+tokenCheckLen || len(b) > maxTokenLen {
		return t, ErrTokenChecksum
	}
	body, check := b[:len(b)-tokenCheckLen], b[len(b)-tokenCheckLen:]
	if sum := blake2s.Sum256(body); string(sum[:tokenCheckLen]) != string(check) {
		return t, ErrTokenChecksum
	}
	if body[0] != tokenVersion {
		return t, ErrTokenVersion
	}
	p := body[1:]
	copy(t.Network[:], p[:8])
	copy(t.ID[:], p[8:16])
	if exp := binary.BigEndian.Uint64(p[16:24]); exp != 0 {
		if exp > 1<<40 {
			return t, ErrTokenChecksum
		}
		t.Expiry = time.Unix(int64(exp), 0).UTC()
	}
	t.Uses = binary.BigEndian.Uint16(p[24:26])
	copy(t.JoinKey[:], p[26:58])
	n := int(p[58])
	p = p[59:]
	if n == 0 || n > maxTokenEndpoints {
		return t, fmt.Errorf("the token lists %d bootstrap peers; a token lists 1-%d", n, maxTokenEndpoints)
	}
	for range n {
		if len(p) < 1 {
			return t, ErrTokenChecksum
		}
		alen := 4
		switch p[0] {
		case 4:
		case 6:
			alen = 16
		default:
			return t, ErrTokenChecksum
		}
		if len(p) < 1+alen+2+key.Len {
			return t, ErrTokenChecksum
		}
		a, _ := netip.AddrFromSlice(p[1 : 1+alen])
		port := binary.BigEndian.Uint16(p[1+alen:])
		var k key.Public
		copy(k[:], p[1+alen+2:])
		t.Endpoints = append(t.Endpoints, Bootstrap{Addr: netip.AddrPortFrom(a, port), Key: k})
		p = p[1+alen+2+key.Len:]
	}
	if len(p) != 0 {
		return t, ErrTokenChecksum
	}
	return t, nil
}

// String is the token's text form.
func (t Token) String() string {
	b, err := AppendToken(nil, t)
	if err != nil {
		return ""
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken parses a token's text form, as a user pastes it: surrounding
// white space and quotes are ignored.
func ParseToken(s string) (Token, error) {
	s = strings.Trim(strings.TrimSpace(s), `"'`)
	if !strings.HasPrefix(s, TokenPrefix) {
		return Token{}, ErrTokenFormat
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s[len(TokenPrefix):])
	if err != nil {
		return Token{}, ErrTokenChecksum
	}
	return ParseTokenBytes(b)
}
