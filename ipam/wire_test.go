package ipam

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

func TestRingRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, r := range history(t, rng, 6, 300) {
		b, err := AppendRingMessage(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ParseMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		want := r.Clone()
		for i := range want.Transfers {
			want.Transfers[i].Accepted = false // local: never on the wire
		}
		if !m.Ring.Equal(want) {
			t.Fatal("round trip changed the ring")
		}
	}
}

// goldenRing: 10.32.0.0/12 seeded by peer A, half granted to peer B, a
// transfer of C by A (done, certified by A's vote) and A's vote. The
// signatures are fixed patterns (the parser does not check them).
func goldenRing(t testing.TB) *Ring {
	r := mustRing(t)
	r.SeedTo(pk(0), 0x0102030405060708)
	if err := r.Grant(pk(0), pk(1), Span{a2u(testRange.Addr()) + 1<<19, a2u(testRange.Addr()) + 1<<20 - 1}); err != nil {
		t.Fatal(err)
	}
	r.Entries[0].Sig = sigOf(0x11)
	r.Entries[1].Sig = sigOf(0x22)
	r.Votes = []Vote{{Voter: pk(0), Dead: pk(2), Seq: 1, Issuer: pk(0), Sig: sigOf(0x33)}}
	r.Transfers = []Transfer{{Dead: pk(2), Issuer: pk(0), Done: true, Sig: sigOf(0x44),
		Cert: []CertVote{{Voter: pk(0), Seq: 1, Sig: sigOf(0x33)}}}}
	return r
}

func sigOf(b byte) (s key.Signature) {
	for i := range s {
		s[i] = b
	}
	return s
}

func TestGolden(t *testing.T) {
	k := func(i int) string { p := pk(i); return hex.EncodeToString(p[:]) }
	sig := func(b byte) string { return strings.Repeat(fmt.Sprintf("%02x", b), key.SigLen) }
	tests := []struct {
		name string
		msg  func() []byte
		want []string
	}{
		{"ring", func() []byte {
			b, err := AppendRingMessage(nil, goldenRing(t))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}, []string{
			"04 01",                  // version 4, type ring
			"0a200000 0c",            // range 10.32.0.0/12
			k(0), "0102030405060708", // seed: peer A, id
			"00",                     // flags: not used
			"0003", k(0), k(1), k(2), // peer table: A, B, C
			"0002",                                            // two entries
			"0a200000 0000 00000001 00100000 0000", sig(0x11), // 10.32.0.0 A v1 free 1<<20, written by A
			"0a280000 0001 00000001 00000000 0000", sig(0x22), // 10.40.0.0 B v1 free 0, written by A (a grant)
			"0001",                               // one vote
			"0000 0002 00000001 0000", sig(0x33), // A's vote on C: seq 1, for A
			"0001",                    // one transfer
			"0002 0000 01", sig(0x44), // C → A, done, A's signature
			"0001 0000 00000001 00", // certificate: A's vote at seq 1, signature in the vote table
		}},
		{"request", func() []byte {
			return AppendRequestMessage(nil, Seed{pk(0), 0x0102030405060708})
		}, []string{"04 02", k(0), "0102030405060708"}},
		{"part", func() []byte {
			// B's entry alone, as the change A's grant made: the last
			// entry, so its run reaches the ring's end and needs no bound.
			r := goldenRing(t)
			msgs, err := ringParts(r, []bool{false, true}, false, true)
			if err != nil || len(msgs) != 1 {
				t.Fatalf("%d parts, %v", len(msgs), err)
			}
			return msgs[0]
		}, []string{
			"04 04",                  // version 4, type ring part
			"0a200000 0c",            // range 10.32.0.0/12
			k(0), "0102030405060708", // seed: peer A, id
			"02",               // flags: relay
			"0002", k(0), k(1), // peer table: A, B
			"0001",                                            // one run
			"0001 01",                                         // one entry, reaching the ring's end
			"0a280000 0001 00000001 00000000 0000", sig(0x22), // 10.40.0.0 B v1 free 0, written by A
			"0000", // no votes
			"0000", // no transfers
		}},
		{"part with bound", func() []byte {
			r := goldenRing(t)
			msgs, err := ringParts(r, []bool{true, false}, false, false)
			if err != nil || len(msgs) != 1 {
				t.Fatalf("%d parts, %v", len(msgs), err)
			}
			return msgs[0]
		}, []string{
			"04 04",
			"0a200000 0c",
			k(0), "0102030405060708",
			"00",               // flags: none
			"0002", k(0), k(1), // peer table: A, B
			"0001",                                            // one run
			"0002 00",                                         // two entries, the last a bound
			"0a200000 0000 00000001 00100000 0000", sig(0x11), // 10.32.0.0 A
			"0a280000 0001 00000001 00000000 0000", sig(0x22), // bound: 10.40.0.0 B
			"0000", "0000",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := hex.DecodeString(strings.ReplaceAll(strings.Join(tt.want, ""), " ", ""))
			if err != nil {
				t.Fatal(err)
			}
			got := tt.msg()
			if !bytes.Equal(got, want) {
				t.Fatalf("got\n%x\nwant\n%x", got, want)
			}
			if _, err := ParseMessage(got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCertificateInline: a certificate vote that the table no longer holds
// (the voter moved on) travels with its signature, and round trips.
func TestCertificateInline(t *testing.T) {
	r := goldenRing(t)
	r.Votes[0].Seq, r.Votes[0].Issuer, r.Votes[0].Sig = 2, pk(1), sigOf(0x55)
	b, err := AppendRingMessage(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	tail := strings.ReplaceAll("0001 0000 00000001 01", " ", "") + strings.Repeat("33", key.SigLen)
	if got := hex.EncodeToString(b[len(b)-len(tail)/2:]); got != tail {
		t.Fatalf("certificate encoded as %s", got)
	}
	m, err := ParseMessage(b)
	if err != nil || !m.Ring.Equal(r) {
		t.Fatalf("round trip: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := AppendRingMessage(nil, goldenRing(t))
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version", mut(func(b []byte) []byte { b[0] = 1; return b })},
		{"flags", mut(func(b []byte) []byte { b[2+4+1+32+8] = 2; return b })},
		{"type", mut(func(b []byte) []byte { b[1] = 9; return b })},
		{"trailing", append(bytes.Clone(good), 0)},
		{"truncated", good[:len(good)-1]},
		{"bits", mut(func(b []byte) []byte { b[6] = 4; return b })},
		{"unmasked", mut(func(b []byte) []byte { b[5] = 0x21; return b })},
		{"too long", make([]byte, MaxMessage+1)},
		{"certificate refers to no vote", mut(func(b []byte) []byte { b[len(b)-2] = 2; return b })}, // seq 2: no such vote
		{"certificate flag", mut(func(b []byte) []byte { b[len(b)-1] = 7; return b })},
		{"certificate inline duplicate", mut(func(b []byte) []byte {
			return append(append(b[:len(b)-1], 1), bytes.Repeat([]byte{0x33}, key.SigLen)...)
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseMessage(tt.b); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

// FuzzParseMessage: never panics; whatever parses re-encodes to the same
// bytes (the encoding is canonical) and is a valid ring.
func FuzzParseMessage(f *testing.F) {
	good, _ := AppendRingMessage(nil, goldenRing(f))
	f.Add(good)
	moved := goldenRing(f) // a certificate vote carried inline
	moved.Votes[0].Seq, moved.Votes[0].Issuer, moved.Votes[0].Sig = 2, pk(1), sigOf(0x55)
	inline, _ := AppendRingMessage(nil, moved)
	f.Add(inline)
	f.Add(AppendRequestMessage(nil, Seed{pk(0), 1}))
	empty, _ := AppendRingMessage(nil, mustRing(f))
	f.Add(empty)
	rng := rand.New(rand.NewPCG(5, 6))
	snaps := history(f, rng, 4, 60)
	for i := 0; i < len(snaps); i += 10 {
		b, _ := AppendRingMessage(nil, snaps[i])
		f.Add(b)
	}
	for _, send := range [][]bool{nil, {true, false}, {false, true}} {
		msgs, _ := ringParts(goldenRing(f), send, true, send == nil)
		for _, m := range msgs {
			f.Add(m)
		}
	}
	// A certificate in slices, and votes past one part (issue 18 rmpeer).
	sliced := sliceRing(f)
	for i := range maxPartVotes + 3 {
		sliced.Votes = append(sliced.Votes, Vote{Voter: madeUp(0xc0, i), Dead: madeUp(1, 0), Seq: 1, Issuer: madeUp(2, 0), Sig: sigOf(0x33)})
	}
	if msgs, err := votesParts(sliced, sliced.Votes, sliced.Transfers, true); err == nil {
		for _, m := range msgs {
			f.Add(m)
		}
	} else {
		f.Fatal(err)
	}
	d := digestOf(goldenRing(f))
	f.Add(appendDigestMessage(nil, &d))
	d.Relay = true // a new control neighbour's
	f.Add(appendDigestMessage(nil, &d))
	f.Add([]byte{1})
	f.Add([]byte{1, 1, 10, 32, 0, 0, 12})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			return
		}
		var again []byte
		switch {
		case m.Ring != nil:
			if err := m.Ring.Validate(); err != nil {
				t.Fatal(err)
			}
			if again, err = AppendRingMessage(nil, m.Ring); err != nil {
				t.Fatal(err)
			}
		case m.Part != nil:
			if err := m.Part.Ring.validate(false); err != nil {
				t.Fatal(err)
			}
			if again, err = AppendRingPartMessage(nil, m.Part); err != nil {
				t.Fatal(err)
			}
		case m.Request != nil:
			again = AppendRequestMessage(nil, *m.Request)
		case m.Digest != nil:
			again = appendDigestMessage(nil, m.Digest)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
	})
}
