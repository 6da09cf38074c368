package key

import "testing"

func TestPrivateRoundTripAndPublic(t *testing.T) {
	k, err := NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParsePrivate(k.String())
	if err != nil || k2 != k {
		t.Fatalf("ParsePrivate(String()) = %v, %v; want the same key", k2, err)
	}
	p := k.Public()
	if p.IsZero() {
		t.Fatal("public key is zero")
	}
	p2, err := ParsePublic(p.String())
	if err != nil || p2 != p {
		t.Fatalf("ParsePublic round trip failed: %v", err)
	}
	p3, err := ParsePublicHex(p.Hex())
	if err != nil || p3 != p {
		t.Fatalf("ParsePublicHex round trip failed: %v", err)
	}
}

func TestNameIsStableAndDistinct(t *testing.T) {
	var a, b Public
	b[31] = 1
	if a.Name() == b.Name() {
		t.Fatalf("keys differing in the last byte share a name %s", a.Name())
	}
	if got := a.Name(); len(got) != 17 || got != a.Name() {
		t.Fatalf("Name() = %q, want a stable 17-character MAC-like string", got)
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	for _, s := range []string{"", "abc", "!!!!", "AAAA", "QUJD"} {
		if _, err := ParsePublic(s); err == nil {
			t.Errorf("ParsePublic(%q) succeeded, want error", s)
		}
	}
}

func TestSecretFromPasswordDeterministic(t *testing.T) {
	a, b, c := SecretFromPassword("s3cret"), SecretFromPassword("s3cret"), SecretFromPassword("other")
	if a != b {
		t.Fatal("same password gave different secrets")
	}
	if a == c {
		t.Fatal("different passwords gave the same secret")
	}
}
