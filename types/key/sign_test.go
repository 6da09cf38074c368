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

// BenchmarkSignDeriving is Sign as it was before signingKeys: the key
// pair derived on every call; BenchmarkSign over it is what keeping it
// saves.
func BenchmarkSignDeriving(b *testing.B) {
	k, _ := NewPrivate()
	msg := make([]byte, 100)
	z := make([]byte, 64)
	for b.Loop() {
		signWith(newEdwardsKey(k), "bench", msg, z)
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

// The derived signing key is kept per private key (signingKeys); these
// signatures were computed before it was, with the key derived on every
// call, so keeping it changes no byte. Key 5 is one whose Edwards point
// has the sign bit set (its scalar is negated), key 1 one whose has not.
func TestSignUnchangedByKeyCache(t *testing.T) {
	golden := map[byte]string{
		1: "994076bd782cc3d23ddf94a04da1ea3688ab23643170035449c3e088c61e83aa1f83cc1cb62578b051774dac458b00f9b2eb7dc2d275b27bb6f0e402728f810d",
		5: "d15eff08bf54e407443086c298e7920923aa0ad0e18a83756da775438b25aa2eb9d0919ab34dd28e8e09477e9f1115ecf8de707118a93404203a170a0edcbf06",
	}
	for seed, want := range golden {
		var k Private
		for i := range k {
			k[i] = byte(i)*7 + seed*13
		}
		k.clamp()
		z := bytes.Repeat([]byte{seed}, 64)
		msg := []byte("fixed message")
		for round, how := range []string{"first (derives)", "second (kept)", "fresh derivation"} {
			var sig Signature
			if round < 2 {
				sig = signWithRandom(k, "weavewg channel v1", msg, z)
			} else {
				sig = signWith(newEdwardsKey(k), "weavewg channel v1", msg, z)
			}
			if got := hex.EncodeToString(sig[:]); got != want {
				t.Errorf("key %d, %s signature\n got %s\nwant %s", seed, how, got, want)
			}
		}
		sig := Sign(k, "weavewg channel v1", msg)
		if err := Verify(k.Public(), "weavewg channel v1", msg, &sig); err != nil {
			t.Errorf("key %d: %v", seed, err)
		}
	}
}

// A process signing with ever new keys keeps at most maxSigningKeys of
// them, and a key dropped from the cache still signs correctly.
func TestSigningKeysBounded(t *testing.T) {
	first, _ := NewPrivate()
	msg := []byte("m")
	Sign(first, "test v1", msg)
	for range maxSigningKeys + 10 {
		k, _ := NewPrivate()
		Sign(k, "test v1", msg)
	}
	signingKeys.Lock()
	n := len(signingKeys.m)
	signingKeys.Unlock()
	if n > maxSigningKeys {
		t.Fatalf("%d signing keys kept, bound %d", n, maxSigningKeys)
	}
	sig := Sign(first, "test v1", msg)
	if err := Verify(first.Public(), "test v1", msg, &sig); err != nil {
		t.Fatal(err)
	}
}

// Signers on several goroutines share the kept keys (run with -race).
func TestSignConcurrent(t *testing.T) {
	keys := make([]Private, 3)
	for i := range keys {
		keys[i], _ = NewPrivate()
	}
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			k := keys[g%len(keys)]
			var err error
			for range 20 {
				sig := Sign(k, "test v1", []byte{byte(g)})
				if err = Verify(k.Public(), "test v1", []byte{byte(g)}, &sig); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
