package nat

import (
	"bytes"
	"net/netip"
	"reflect"
	"testing"
)

var goldenOffer = []byte{
	0x01,                                           // version 1
	0x02,                                           // offer
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // session ID
	0x04, 'a', 'b', 'c', 'd', // ufrag
	0x08, 's', 'e', 'c', 'r', 'e', 't', 'p', 'w', // pwd
}

var goldenReflexive = []byte{
	0x01,                   // version 1
	0x06,                   // reflexive
	0, 0, 0, 0, 0, 0, 0, 0, // session ID: none
	0x01,                           // one mapping
	0x04, 192, 0, 2, 1, 0x1a, 0x7f, // server 192.0.2.1:6783
	0x04, 192, 0, 2, 101, 0xc1, 0xc1, // mapped 192.0.2.101:49601
}

func TestSignalReflexiveGolden(t *testing.T) {
	s := Signal{Type: SignalReflexive, Reflexive: []Mapping{{Server: netip.MustParseAddrPort("192.0.2.1:6783"), Mapped: netip.MustParseAddrPort("192.0.2.101:49601")}}}
	b, err := AppendSignal(nil, s)
	if err != nil || !bytes.Equal(b, goldenReflexive) {
		t.Fatalf("got % x, %v", b, err)
	}
	got, err := ParseSignal(goldenReflexive)
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("parsed %+v, %v", got, err)
	}
}

func TestSignalGolden(t *testing.T) {
	s := Signal{Type: SignalOffer, Session: 0x0102030405060708, Ufrag: "abcd", Pwd: "secretpw"}
	b, err := AppendSignal(nil, s)
	if err != nil || !bytes.Equal(b, goldenOffer) {
		t.Fatalf("got % x, %v", b, err)
	}
	got, err := ParseSignal(goldenOffer)
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("parsed %+v, %v", got, err)
	}
}

func TestSignalRoundTripAndErrors(t *testing.T) {
	for _, s := range []Signal{
		{Type: SignalRequest},
		{Type: SignalBye, Session: 7},
		{Type: SignalAnswer, Session: 1, Ufrag: "u", Pwd: "p"},
		{Type: SignalCandidate, Session: 9, Candidate: "1 1 udp 2130706431 192.0.2.1 6783 typ host"},
		{Type: SignalReflexive, Reflexive: []Mapping{
			{Server: netip.MustParseAddrPort("192.0.2.1:6783"), Mapped: netip.MustParseAddrPort("192.0.2.101:49601")},
			{Server: netip.MustParseAddrPort("[2001:db8::1]:6783"), Mapped: netip.MustParseAddrPort("[2001:db8::2]:1")},
		}},
	} {
		b, err := AppendSignal(nil, s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseSignal(b)
		if err != nil || !reflect.DeepEqual(got, s) {
			t.Fatalf("%+v: parsed %+v, %v", s, got, err)
		}
	}
	tests := []struct {
		name string
		b    []byte
		err  error
	}{
		{"short", goldenOffer[:9], ErrSignalShort},
		{"version 2", append([]byte{2}, goldenOffer[1:]...), ErrSignalVersion},
		{"type 9", append([]byte{1, 9}, goldenOffer[2:]...), ErrSignalType},
		{"trailing", append(append([]byte(nil), goldenOffer...), 0), ErrSignalTrailing},
		{"cut pwd", goldenOffer[:len(goldenOffer)-1], ErrSignalShort},
		{"empty ufrag", []byte{1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'p'}, ErrSignalField},
		{"request with body", []byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5}, ErrSignalTrailing},
		{"reflexive: too many", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 5}, ErrSignalField},
		{"reflexive: address of 5 bytes", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 1, 5, 1, 2, 3, 4, 5, 0, 1}, ErrSignalField},
		{"reflexive: cut", goldenReflexive[:len(goldenReflexive)-1], ErrSignalShort},
	}
	for _, tt := range tests {
		if _, err := ParseSignal(tt.b); err != tt.err {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.err)
		}
	}
	if _, err := AppendSignal(nil, Signal{Type: SignalOffer, Ufrag: "", Pwd: "x"}); err != ErrSignalField {
		t.Errorf("empty ufrag encoded: %v", err)
	}
}

// FuzzSignal: whatever parses encodes back to the same bytes.
func FuzzSignal(f *testing.F) {
	f.Add(goldenOffer)
	f.Add(goldenReflexive)
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 'a', 'b', 'c'})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSignal(b)
		if err != nil {
			return
		}
		again, err := AppendSignal(nil, s)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("% x → %+v → % x, %v", b, s, again, err)
		}
	})
}
