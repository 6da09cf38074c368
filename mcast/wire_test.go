package mcast

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// goldenMembership is Membership{Seq: 0x0102030405060708, Groups:
// 239.1.1.1, 239.255.0.7} on the wire.
var goldenMembership = []byte{
	0x01,                                           // version 1
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // seq
	0x00, 0x02, // two groups
	239, 1, 1, 1, // ascending
	239, 255, 0, 7,
}

func TestMembershipGolden(t *testing.T) {
	m := Membership{Seq: 0x0102030405060708, Groups: []netip.Addr{
		netip.MustParseAddr("239.1.1.1"), netip.MustParseAddr("239.255.0.7"),
	}}
	b, err := AppendMembership(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, goldenMembership) {
		t.Fatalf("encoding\n got %x\nwant %x", b, goldenMembership)
	}
	got, err := ParseMembership(goldenMembership)
	if err != nil || got.Seq != m.Seq || len(got.Groups) != 2 || got.Groups[0] != m.Groups[0] || got.Groups[1] != m.Groups[1] {
		t.Fatalf("parse: %+v, %v", got, err)
	}
}

func TestMembershipRefused(t *testing.T) {
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), goldenMembership...))
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short header", goldenMembership[:10]},
		{"version 2", mod(func(b []byte) []byte { b[0] = 2; return b })},
		{"trailing byte", mod(func(b []byte) []byte { return append(b, 0) })},
		{"missing group", goldenMembership[:len(goldenMembership)-4]},
		{"count too large", mod(func(b []byte) []byte { b[9], b[10] = 0xff, 0xff; return b })},
		{"unicast group", mod(func(b []byte) []byte { b[11] = 10; return b })},
		{"link-local group", mod(func(b []byte) []byte {
			copy(b[15:], []byte{224, 0, 0, 251})
			b[11] = 224
			b[12], b[13], b[14] = 0, 0, 1
			return b
		})},
		{"descending", mod(func(b []byte) []byte { b[11], b[15] = 239, 238; return b })},
		{"repeated", mod(func(b []byte) []byte { copy(b[15:], b[11:15]); return b })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseMembership(tc.b); !errors.Is(err, ErrMalformed) {
				t.Errorf("ParseMembership(%x) = %v, want ErrMalformed", tc.b, err)
			}
		})
	}
	if _, err := AppendMembership(nil, Membership{Groups: []netip.Addr{netip.MustParseAddr("224.0.0.251")}}); err == nil {
		t.Error("a link-local group was encoded")
	}
}

func TestDataRoundTrip(t *testing.T) {
	pkt := []byte{0x45, 1, 2, 3}
	b := AppendData(nil, pkt)
	if !bytes.Equal(b, []byte{'W', 'M', 1, 0, 0x45, 1, 2, 3}) {
		t.Fatalf("AppendData = %x", b)
	}
	got, err := ParseData(b)
	if err != nil || !bytes.Equal(got, pkt) {
		t.Fatalf("ParseData = %x, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {'W', 'M', 1}, {'W', 'X', 1, 0}, {'W', 'M', 2, 0}, {'W', 'M', 1, 1}} {
		if _, err := ParseData(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseData(%x) = %v", bad, err)
		}
	}
}

// FuzzMembership: whatever parses encodes back to the same bytes, and
// nothing panics.
func FuzzMembership(f *testing.F) {
	f.Add(goldenMembership)
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMembership(b)
		if err != nil {
			return
		}
		out, err := AppendMembership(nil, m)
		if err != nil {
			t.Fatalf("parsed %x but cannot encode it: %v", b, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip\n in %x\nout %x", b, out)
		}
	})
}

// FuzzInbound: no datagram from a peer crashes the receiving side, and
// whatever it accepts is an IPv4 packet to a group with members here or a
// broadcast address.
func FuzzInbound(f *testing.F) {
	e, peer := testEngine()
	f.Add(AppendData(nil, udpPacket(peer.src, netip.MustParseAddr("239.1.1.1"), 8)))
	f.Add(AppendData(nil, udpPacket(peer.src, netip.MustParseAddr("10.47.255.255"), 64)))
	f.Add([]byte("WM\x01\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pkt, _, ok := e.Inbound(peer.host, b)
		if !ok {
			return
		}
		h, hok := parseIPv4(pkt)
		if !hok || !(h.dst.IsMulticast() || h.dst == limitedBroadcast || h.dst == netip.MustParseAddr("10.47.255.255")) {
			t.Fatalf("accepted %x", pkt)
		}
	})
}
