// Package key holds weavewg's Curve25519 identity keys and the network secret,
// and their text encodings.
//
// A peer has one key pair: it is the WireGuard static key and the control-plane
// (Noise) static key at once. The peer's name, shown everywhere a Weave user
// expects a peer name, is derived from the public key.
package key

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/curve25519"
)

// Len is the length in bytes of every key and secret here.
const Len = 32

// Private is a Curve25519 private key, clamped as RFC 7748 asks.
type Private [Len]byte

// Public is a Curve25519 public key.
type Public [Len]byte

// Secret is a network's shared secret. Knowing it is membership: it keys the
// control handshake and is every WireGuard session's preshared key.
type Secret [Len]byte

// ErrBadKey is returned for a key string that does not decode to 32 bytes.
var ErrBadKey = errors.New("key: not a 32-byte base64 key")

// NewPrivate returns a fresh private key from crypto/rand.
func NewPrivate() (Private, error) {
	var k Private
	if _, err := rand.Read(k[:]); err != nil {
		return Private{}, fmt.Errorf("key: reading random bytes: %w", err)
	}
	k.clamp()
	return k, nil
}

func (k *Private) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// IsZero reports whether k is all zero bytes (unset).
func (k Private) IsZero() bool { return k == Private{} }

// Public derives the public key of k.
func (k Private) Public() Public {
	var p Public
	curve25519.ScalarBaseMult((*[32]byte)(&p), (*[32]byte)(&k))
	return p
}

// Hex is the lower-case hex form wireguard-go's UAPI takes.
func (k Private) Hex() string { return hex.EncodeToString(k[:]) }

// String is the base64 form `wg` prints. Private keys are never logged; this
// exists for the state file.
func (k Private) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParsePrivate decodes the base64 form of a private key.
func ParsePrivate(s string) (Private, error) {
	var k Private
	if err := decode(k[:], s); err != nil {
		return Private{}, err
	}
	k.clamp()
	return k, nil
}

// IsZero reports whether p is all zero bytes (unset).
func (p Public) IsZero() bool { return p == Public{} }

// String is the base64 form `wg` prints.
func (p Public) String() string { return base64.StdEncoding.EncodeToString(p[:]) }

// Hex is the lower-case hex form wireguard-go's UAPI takes and prints.
func (p Public) Hex() string { return hex.EncodeToString(p[:]) }

// Name is the peer name derived from p, six bytes printed like a MAC address
// (as Weave Net named peers), e.g. "3e:9a:01:7c:55:d2". It is a hash of the
// key so two keys sharing a prefix still get different names.
func (p Public) Name() string {
	h := blake2s.Sum256(p[:])
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3], h[4], h[5])
}

// Less orders keys bytewise; it is the deterministic tie-break wherever two
// peers must agree on something without talking.
func (p Public) Less(o Public) bool {
	for i := range p {
		if p[i] != o[i] {
			return p[i] < o[i]
		}
	}
	return false
}

// ParsePublic decodes the base64 form of a public key.
func ParsePublic(s string) (Public, error) {
	var p Public
	if err := decode(p[:], s); err != nil {
		return Public{}, err
	}
	return p, nil
}

// ParsePublicHex decodes the hex form wireguard-go's UAPI prints.
func ParsePublicHex(s string) (Public, error) {
	var p Public
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != Len {
		return Public{}, ErrBadKey
	}
	copy(p[:], b)
	return p, nil
}

// Hex is the lower-case hex form wireguard-go's UAPI takes for preshared_key.
func (s Secret) Hex() string { return hex.EncodeToString(s[:]) }

// IsZero reports whether s is unset.
func (s Secret) IsZero() bool { return s == Secret{} }

// passwordSalt is fixed so that every peer derives the same secret from the
// same password with nothing else shared. It is versioned: changing the
// derivation changes the salt.
const passwordSalt = "weavewg network secret from password v1"

// SecretFromPassword derives the network secret from a Weave-style shared
// password. Argon2id makes an offline guess against a captured handshake cost
// 64 MiB and a few tens of milliseconds each; the daemon pays that once at start.
func SecretFromPassword(password string) Secret {
	var s Secret
	copy(s[:], argon2.IDKey([]byte(password), []byte(passwordSalt), 2, 64*1024, 2, Len))
	return s
}

func decode(dst []byte, s string) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(dst) {
		return ErrBadKey
	}
	copy(dst, b)
	return nil
}
