package key

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"sync"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// Signatures by the identity key: XEdDSA (Signal's specification,
// https://signal.org/docs/specifications/xeddsa/) on the peer's Curve25519
// key, so a signature is checked against the public key everyone already
// has — the peer's name is derived from it, records and ring entries carry
// it — and there is no second key whose binding to the first would have to
// be proven to every receiver, including those a record is forwarded to.
//
// The signer turns its Montgomery private scalar k into the Edwards key
// pair (A, a) with A's sign bit zero (negating a when kB is "negative");
// the verifier maps the Montgomery u of the public key to the Edwards y =
// (u-1)/(u+1) with sign bit zero. The signature is then an ordinary
// Ed25519 signature (R ‖ s) by A, which crypto/ed25519.Verify checks. The
// nonce is SHA-512 of a domain-separated prefix, a, the message and 64
// random bytes, as the specification asks.
//
// Every signed message starts with a domain string (its purpose and format
// version), so a signature made for one purpose never verifies for another.

// SigLen is the length of a signature.
const SigLen = 64

// Signature is an XEdDSA signature.
type Signature [SigLen]byte

// ErrBadSignature is returned by Verify for a signature that does not check.
var ErrBadSignature = errors.New("key: bad signature")

// signedMessage is len(domain) ‖ domain ‖ msg.
func signedMessage(domain string, msg []byte) []byte {
	m := make([]byte, 0, 1+len(domain)+len(msg))
	m = append(m, byte(len(domain)))
	m = append(m, domain...)
	return append(m, msg...)
}

// hash1Prefix is 2^256 - 2 in 32 little-endian bytes: the prefix of the
// specification's hash_1, which keeps the nonce hash apart from
// Ed25519's.
var hash1Prefix = func() []byte {
	p := bytes.Repeat([]byte{0xff}, 32)
	p[0] = 0xfe
	return p
}()

// edwardsPrivate is calculate_key_pair of the specification.
func edwardsPrivate(k Private) (a *edwards25519.Scalar, A []byte) {
	a, err := edwards25519.NewScalar().SetBytesWithClamping(k[:])
	if err != nil {
		panic("key: clamping a 32-byte key failed: " + err.Error())
	}
	E := new(edwards25519.Point).ScalarBaseMult(a)
	A = E.Bytes()
	if A[31]&0x80 != 0 {
		a.Negate(a)
		A[31] &^= 0x80
	}
	return a, A
}

// edwardsKey is k's Edwards key pair as signing uses it. It depends on k
// alone, and deriving it costs a scalar base multiplication, as much as
// the rest of a signature: the channel layer signs every unicast, so it is
// derived once per key and kept (signingKeys). Never changed once made.
type edwardsKey struct {
	a      edwards25519.Scalar // private scalar, sign-adjusted
	aBytes []byte              // a's encoding, hashed into every nonce
	A      []byte              // public key, sign bit zero
}

func newEdwardsKey(k Private) *edwardsKey {
	a, A := edwardsPrivate(k)
	return &edwardsKey{a: *a, aBytes: a.Bytes(), A: A}
}

// maxSigningKeys bounds signingKeys. A daemon signs with one key (two
// across a key change); the simulation (package sim) runs up to a
// thousand peers in one process, each signing with its own key. Past the
// bound an arbitrary entry is dropped, so a process that signs with ever
// new keys keeps at most this many (about 100 KiB) and stays correct,
// only slower.
const maxSigningKeys = 1024

// signingKeys caches the Edwards key pairs of the private keys this
// process signs with. It holds nothing the process does not already hold
// (each entry is its private key in another form) and is never logged or
// exported.
var signingKeys struct {
	sync.Mutex
	m map[Private]*edwardsKey
}

// signingKey returns k's Edwards key pair, derived once per key.
func signingKey(k Private) *edwardsKey {
	signingKeys.Lock()
	ek := signingKeys.m[k]
	signingKeys.Unlock()
	if ek != nil {
		return ek
	}
	ek = newEdwardsKey(k) // outside the lock: other signers need not wait
	signingKeys.Lock()
	defer signingKeys.Unlock()
	if signingKeys.m == nil {
		signingKeys.m = make(map[Private]*edwardsKey)
	}
	if len(signingKeys.m) >= maxSigningKeys {
		for old := range signingKeys.m {
			delete(signingKeys.m, old)
			break
		}
	}
	signingKeys.m[k] = ek
	return ek
}

// Sign signs msg for domain (at most 255 bytes) with k.
func Sign(k Private, domain string, msg []byte) Signature {
	var z [64]byte
	if _, err := rand.Read(z[:]); err != nil {
		panic("key: reading random bytes: " + err.Error())
	}
	return signWithRandom(k, domain, msg, z[:])
}

func signWithRandom(k Private, domain string, msg, z []byte) Signature {
	return signWith(signingKey(k), domain, msg, z)
}

func signWith(ek *edwardsKey, domain string, msg, z []byte) Signature {
	if len(domain) > 255 {
		panic("key: signature domain longer than 255 bytes")
	}
	m := signedMessage(domain, msg)
	a, A := &ek.a, ek.A
	h := sha512.New()
	h.Write(hash1Prefix)
	h.Write(ek.aBytes)
	h.Write(m)
	h.Write(z)
	r, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	R := new(edwards25519.Point).ScalarBaseMult(r).Bytes()
	h.Reset()
	h.Write(R)
	h.Write(A)
	h.Write(m)
	c, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	s := edwards25519.NewScalar().MultiplyAdd(c, a, r)
	var sig Signature
	copy(sig[:32], R)
	copy(sig[32:], s.Bytes())
	return sig
}

// EdwardsPublic is the Ed25519 public key that checks p's signatures, or
// false if p is not a canonical Curve25519 public key.
func EdwardsPublic(p Public) (ed25519.PublicKey, bool) {
	if p[31]&0x80 != 0 {
		return nil, false
	}
	u, err := new(field.Element).SetBytes(p[:])
	if err != nil || !bytes.Equal(u.Bytes(), p[:]) {
		return nil, false // u ≥ p: not canonical
	}
	one := new(field.Element).One()
	num := new(field.Element).Subtract(u, one)
	den := new(field.Element).Add(u, one)
	y := new(field.Element).Multiply(num, new(field.Element).Invert(den))
	return ed25519.PublicKey(y.Bytes()), true // sign bit zero
}

// Verify checks sig over msg for domain against the signer's public key.
func Verify(p Public, domain string, msg []byte, sig *Signature) error {
	A, ok := EdwardsPublic(p)
	if !ok || len(domain) > 255 {
		return ErrBadSignature
	}
	if !ed25519.Verify(A, signedMessage(domain, msg), sig[:]) {
		return ErrBadSignature
	}
	return nil
}
