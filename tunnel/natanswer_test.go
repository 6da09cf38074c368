package tunnel

import (
	"net/netip"
	"testing"
)

// icmpPortUnreachable is the ICMP message a router sends for a UDP datagram
// from sport to dst (type 3 code 3, the datagram's IP header and first 8
// bytes).
func icmpPortUnreachable(sport uint16, dst netip.AddrPort) []byte {
	m := []byte{3, 3, 0, 0, 0, 0, 0, 0}
	ip := []byte{0x45, 0, 0, 56, 0, 0, 0x40, 0, 63, 17, 0, 0, 198, 51, 100, 2}
	a := dst.Addr().As4()
	ip = append(ip, a[:]...)
	udp := []byte{byte(sport >> 8), byte(sport), byte(dst.Port() >> 8), byte(dst.Port()), 0, 36, 0, 0}
	return append(append(m, ip...), udp...)
}

// TestICMPUnreachable: only a port unreachable about a UDP datagram from
// our port names a destination; anything else, or cut short, names none.
func TestICMPUnreachable(t *testing.T) {
	dst := netip.MustParseAddrPort("192.0.2.101:14102")
	good := icmpPortUnreachable(6783, dst)
	if got, ok := icmpUnreachable(good, 6783); !ok || got != dst {
		t.Errorf("port unreachable about ours: %v, %v; want %v", got, ok, dst)
	}
	hostUnreach := append([]byte(nil), good...)
	hostUnreach[1] = 1
	tcp := append([]byte(nil), good...)
	tcp[8+9] = 6
	for name, m := range map[string][]byte{
		"another port's datagram": icmpPortUnreachable(53, dst),
		"host unreachable":        hostUnreach,
		"about TCP":               tcp,
		"echo reply":              {0, 0, 0, 0, 0, 0, 0, 0},
		"cut short":               good[:len(good)-1],
		"empty":                   nil,
	} {
		if got, ok := icmpUnreachable(m, 6783); ok {
			t.Errorf("%s: names %v", name, got)
		}
	}
	// A destination that is no peer's endpoint teaches nothing.
	f := newRelayFixture(t)
	f.bind.noteUnreachable(netip.MustParseAddrPort("192.0.2.99:6783"))
	if got := f.bind.Counters()[CounterNATPortUnreachable]; got != 0 {
		t.Errorf("%s = %d for a stranger's address", CounterNATPortUnreachable, got)
	}
}

func FuzzICMPUnreachable(f *testing.F) {
	f.Add(icmpPortUnreachable(6783, netip.MustParseAddrPort("192.0.2.101:14102")))
	f.Fuzz(func(t *testing.T, b []byte) { icmpUnreachable(b, 6783) })
}
