package mcast

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

// goldenMembership is Membership{Seq: 0x0102030405060708, Subnets:
// 10.32.0.0/16 (239.1.1.1, 239.255.0.7), 10.40.1.0/24 (none)} on the wire.
var goldenMembership = []byte{
	0x02,                                           // version 2
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // seq
	0x00, 0x02, // two subnets
	10, 32, 0, 0, 16, // ascending
	0x00, 0x02, // two groups
	239, 1, 1, 1, // ascending
	239, 255, 0, 7,
	10, 40, 1, 0, 24,
	0x00, 0x00, // no group
}

func goldenValue() Membership {
	return Membership{Seq: 0x0102030405060708, Subnets: []SubnetGroups{
		{Subnet: netip.MustParsePrefix("10.32.0.0/16"), Groups: []netip.Addr{netip.MustParseAddr("239.1.1.1"), netip.MustParseAddr("239.255.0.7")}},
		{Subnet: netip.MustParsePrefix("10.40.1.0/24"), Groups: []netip.Addr{}},
	}}
}

func TestMembershipGolden(t *testing.T) {
	m := goldenValue()
	b, err := AppendMembership(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, goldenMembership) {
		t.Fatalf("encoding\n got %x\nwant %x", b, goldenMembership)
	}
	got, err := ParseMembership(goldenMembership)
	if err != nil || !reflect.DeepEqual(got, m) {
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
		{"version 1", mod(func(b []byte) []byte { b[0] = 1; return b })},
		{"trailing byte", mod(func(b []byte) []byte { return append(b, 0) })},
		{"missing subnet", goldenMembership[:len(goldenMembership)-7]},
		{"truncated subnet", goldenMembership[:len(goldenMembership)-1]},
		{"missing group", mod(func(b []byte) []byte { return append(b[:20], b[24:]...) })},
		{"subnet count too large", mod(func(b []byte) []byte { b[9], b[10] = 0xff, 0xff; return b })},
		{"group count too large", mod(func(b []byte) []byte { b[16], b[17] = 0xff, 0xff; return b })},
		{"prefix length 33", mod(func(b []byte) []byte { b[15] = 33; return b })},
		{"subnet not masked", mod(func(b []byte) []byte { b[13] = 1; return b })},
		{"subnets descending", mod(func(b []byte) []byte { b[27] = 31; return b })},
		{"repeated subnet", mod(func(b []byte) []byte { copy(b[26:31], b[11:16]); return b })},
		{"unicast group", mod(func(b []byte) []byte { b[18] = 10; return b })},
		{"link-local group", mod(func(b []byte) []byte {
			copy(b[22:], []byte{224, 0, 0, 251})
			copy(b[18:], []byte{224, 0, 0, 1})
			return b
		})},
		{"descending", mod(func(b []byte) []byte { b[18], b[22] = 239, 238; return b })},
		{"repeated", mod(func(b []byte) []byte { copy(b[22:26], b[18:22]); return b })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseMembership(tc.b); !errors.Is(err, ErrMalformed) {
				t.Errorf("ParseMembership(%x) = %v, want ErrMalformed", tc.b, err)
			}
		})
	}
	sub := netip.MustParsePrefix("10.32.0.0/16")
	for _, m := range []Membership{
		{Subnets: []SubnetGroups{{Subnet: sub, Groups: []netip.Addr{netip.MustParseAddr("224.0.0.251")}}}},
		{Subnets: []SubnetGroups{{Subnet: netip.MustParsePrefix("10.32.0.1/16")}}},
		{Subnets: []SubnetGroups{{Subnet: sub}, {Subnet: sub}}},
	} {
		if _, err := AppendMembership(nil, m); err == nil {
			t.Errorf("%+v was encoded", m)
		}
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
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
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
