package key

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"testing"

	"filippo.io/edwards25519"
)

func TestSignVerify(t *testing.T) {
	for range 10 {
		k, err := NewPrivate()
		if err != nil {
			t.Fatal(err)
		}
		p := k.Public()
		msg := []byte("a ring entry")
		sig := Sign(k, "test v1", msg)
		if err := Verify(p, "test v1", msg, &sig); err != nil {
			t.Fatalf("own signature: %v", err)
		}
		if Verify(p, "test v2", msg, &sig) == nil {
			t.Fatal("verified under another domain")
		}
		if Verify(p, "test v1", []byte("a ring entrY"), &sig) == nil {
			t.Fatal("verified another message")
		}
		other, _ := NewPrivate()
		if Verify(other.Public(), "test v1", msg, &sig) == nil {
			t.Fatal("verified with another key")
		}
		for i := range SigLen {
			bad := sig
			bad[i] ^= 1 << (i % 8)
			if Verify(p, "test v1", msg, &bad) == nil {
				t.Fatalf("verified with byte %d flipped", i)
			}
		}
	}
}

// The Edwards key the verifier derives from the Montgomery public key is
// the one the signer derives from the private key: the binding XEdDSA
// rests on.
func TestEdwardsKeyMatchesMontgomery(t *testing.T) {
	for range 100 {
		k, _ := NewPrivate()
		_, A := edwardsPrivate(k)
		got, ok := EdwardsPublic(k.Public())
		if !ok || !bytes.Equal(got, A) {
			t.Fatalf("Edwards key from public %x, from private %x", got, A)
		}
		// A's point, sign bit zero, maps back to the Montgomery u.
		P, err := new(edwards25519.Point).SetBytes(A)
		if err != nil {
			t.Fatal(err)
		}
		pub := k.Public()
		if u := P.BytesMontgomery(); !bytes.Equal(u, pub[:]) {
			t.Fatalf("Edwards key maps to u %x, public key %x", u, k.Public())
		}
	}
}

func TestEdwardsPublicRejectsNonCanonical(t *testing.T) {
	var p Public
	for i := range p {
		p[i] = 0xff
	}
	p[31] = 0x7f // 2^255 - 1 ≥ p
	if _, ok := EdwardsPublic(p); ok {
		t.Error("accepted u ≥ p")
	}
	p[31] = 0xff
	if _, ok := EdwardsPublic(p); ok {
		t.Error("accepted the high bit")
	}
}

// Golden: a fixed key, message and nonce randomness give these bytes, so a
// change of the construction shows here. A signature is also a plain
// Ed25519 signature by the derived key.
func TestSignGolden(t *testing.T) {
	var k Private
	for i := range k {
		k[i] = byte(i)
	}
	k.clamp()
	z := bytes.Repeat([]byte{0x5a}, 64)
	sig := signWithRandom(k, "weavewg golden v1", []byte("hello"), z)
	const want = "d96a31c22ac984244e6e88c053f6a965f2e21742fe8d910d54638134d5e13af4cf646ecc42ca746b3a8432600754fb8311c73d03e543310bca7b923ff98a020f"
	if got := hex.EncodeToString(sig[:]); got != want {
		t.Errorf("signature\n got %s\nwant %s", got, want)
	}
	A, _ := EdwardsPublic(k.Public())
	if !ed25519.Verify(A, signedMessage("weavewg golden v1", []byte("hello")), sig[:]) {
		t.Error("not an Ed25519 signature by the derived key")
	}
}

func BenchmarkSign(b *testing.B) {
	k, _ := NewPrivate()
	msg := make([]byte, 100)
	for b.Loop() {
		Sign(k, "bench", msg)
	}
}

func BenchmarkVerify(b *testing.B) {
	k, _ := NewPrivate()
	msg := make([]byte, 100)
	sig := Sign(k, "bench", msg)
	p := k.Public()
	for b.Loop() {
		if Verify(p, "bench", msg, &sig) != nil {
			b.Fatal("bad")
		}
	}
}
