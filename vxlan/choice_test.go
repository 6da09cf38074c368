package vxlan

import (
	"net/netip"
	"testing"
	"time"
)

func sec(s float64) int64 { return int64(s * float64(time.Second)) }

func TestPathComesUpAfterSteadyAnswers(t *testing.T) {
	var p Path
	p.SetTrusted(true)
	if use, _ := p.Decide(sec(100)); use {
		t.Fatal("no answer yet, but VXLAN chosen")
	}
	p.Replied(sec(101), time.Millisecond)
	if use, _ := p.Decide(sec(101)); use {
		t.Fatal("first answer switched at once; want UpAfter of steady answers")
	}
	p.Replied(sec(102), time.Millisecond)
	p.Replied(sec(103), time.Millisecond)
	use, changed := p.Decide(sec(103))
	if !use || !changed {
		t.Fatalf("after %v of answers: use %v changed %v, want true true", UpAfter, use, changed)
	}
	if use, changed := p.Decide(sec(103.5)); !use || changed {
		t.Fatalf("steady: use %v changed %v", use, changed)
	}
}

func TestPathFallsBackWhenSilent(t *testing.T) {
	var p Path
	p.SetTrusted(true)
	for s := 1.0; s <= 4; s++ {
		p.Replied(sec(s), time.Millisecond)
	}
	if use, _ := p.Decide(sec(4)); !use {
		t.Fatal("not up")
	}
	if use, _ := p.Decide(sec(4) + int64(DeadAfter)); !use {
		t.Fatal("fell back before DeadAfter of silence")
	}
	use, changed := p.Decide(sec(4) + int64(DeadAfter) + 1)
	if use || !changed {
		t.Fatalf("silent past DeadAfter: use %v changed %v, want false true", use, changed)
	}
	// Answers again: a fresh streak must last UpAfter before it is used.
	p.Replied(sec(20), time.Millisecond)
	if use, _ := p.Decide(sec(20)); use {
		t.Fatal("came back on the first answer after an outage")
	}
	p.Replied(sec(21), time.Millisecond)
	p.Replied(sec(22), time.Millisecond)
	if use, _ := p.Decide(sec(22)); !use {
		t.Fatal("did not come back after a steady streak")
	}
}

func TestPathUntrustedNeverUsed(t *testing.T) {
	var p Path
	for s := 1.0; s <= 5; s++ {
		p.Replied(sec(s), time.Millisecond)
	}
	if use, _ := p.Decide(sec(5)); use {
		t.Fatal("untrusted pair chose VXLAN")
	}
	p.SetTrusted(true)
	if use, _ := p.Decide(sec(5)); !use {
		t.Fatal("trusted with a steady streak: not chosen")
	}
	p.SetTrusted(false)
	if use, changed := p.Decide(sec(5)); use || !changed {
		t.Fatalf("trust withdrawn: use %v changed %v", use, changed)
	}
}

func TestTrustedPair(t *testing.T) {
	tr := Trusted{netip.MustParsePrefix("192.0.2.0/30"), netip.MustParsePrefix("198.51.100.7/32")}
	a := netip.MustParseAddr
	cases := []struct {
		l, r string
		want bool
	}{
		{"192.0.2.1", "192.0.2.2", true},
		{"192.0.2.1", "198.51.100.7", true},
		{"192.0.2.1", "192.0.2.4", false},
		{"192.0.2.9", "192.0.2.2", false},
		{"::ffff:192.0.2.1", "192.0.2.2", true},
	}
	for _, c := range cases {
		if got := tr.Pair(a(c.l), a(c.r)); got != c.want {
			t.Errorf("Pair(%s, %s) = %v, want %v", c.l, c.r, got, c.want)
		}
	}
	if tr.Pair(netip.Addr{}, a("192.0.2.2")) {
		t.Error("invalid local address trusted")
	}
}
