package tunnel

import (
	"encoding/binary"
	"testing"
)

// wgMsg returns a WireGuard message of type typ and size n with a receiver
// index (bytes 4–7 of a transport or response message) of recv.
func wgMsg(typ byte, n int, recv [4]byte) []byte {
	b := make([]byte, n)
	b[0] = typ
	copy(b[4:8], recv[:])
	return b
}

var stunCookie = [4]byte{0x21, 0x12, 0xA4, 0x42}

// stunMsg returns a STUN message of type typ with attrLen bytes of attributes.
func stunMsg(typ uint16, attrLen int) []byte {
	b := make([]byte, 20+attrLen)
	binary.BigEndian.PutUint16(b[0:2], typ)
	binary.BigEndian.PutUint16(b[2:4], uint16(attrLen))
	copy(b[4:8], stunCookie[:])
	return b
}

func relayMsg(n int) []byte {
	b := make([]byte, n)
	b[0], b[1] = RelayMagic, RelayVersion
	return b
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		want Kind
	}{
		{"empty", nil, KindJunk},
		{"one byte", []byte{1}, KindJunk},
		{"wg initiation", wgMsg(1, 148, [4]byte{}), KindWireGuard},
		{"wg initiation short", wgMsg(1, 147, [4]byte{}), KindJunk},
		{"wg initiation long", wgMsg(1, 149, [4]byte{}), KindJunk},
		{"wg response", wgMsg(2, 92, [4]byte{1, 2, 3, 4}), KindWireGuard},
		{"wg response wrong size", wgMsg(2, 148, [4]byte{}), KindJunk},
		{"wg cookie reply", wgMsg(3, 64, [4]byte{}), KindWireGuard},
		{"wg cookie reply wrong size", wgMsg(3, 65, [4]byte{}), KindJunk},
		{"wg keepalive", wgMsg(4, 32, [4]byte{}), KindWireGuard},
		{"wg transport", wgMsg(4, 1452, [4]byte{9, 9, 9, 9}), KindWireGuard},
		{"wg transport too short", wgMsg(4, 31, [4]byte{}), KindJunk},
		// The receiver index is chosen at random by the receiving peer; when
		// it spells the STUN cookie the packet is still WireGuard.
		{"wg transport with stun cookie index", wgMsg(4, 32, stunCookie), KindWireGuard},
		{"wg transport with stun cookie index, long", wgMsg(4, 1000, stunCookie), KindWireGuard},
		{"wg response with stun cookie index", wgMsg(2, 92, stunCookie), KindWireGuard},
		{"wg type 5", wgMsg(5, 148, [4]byte{}), KindJunk},
		{"wg type 0", wgMsg(0, 148, [4]byte{}), KindJunk},
		{"wg type with nonzero reserved byte", func() []byte { b := wgMsg(4, 64, [4]byte{}); b[2] = 1; return b }(), KindJunk},
		{"stun binding request", stunMsg(0x0001, 0), KindSTUN},
		{"stun binding request with attributes", stunMsg(0x0001, 8), KindSTUN},
		{"stun binding success", stunMsg(0x0101, 12), KindSTUN},
		{"stun length too long", func() []byte { b := stunMsg(0x0001, 8); return b[:24] }(), KindJunk},
		{"stun length not multiple of 4", func() []byte { b := stunMsg(0x0001, 6); return b }(), KindJunk},
		{"stun header short", stunMsg(0x0001, 0)[:19], KindJunk},
		{"stun wrong cookie", func() []byte { b := stunMsg(0x0001, 0); b[7] = 0; return b }(), KindJunk},
		{"stun top bits set", func() []byte { b := stunMsg(0x0001, 0); b[0] = 0x40; return b }(), KindJunk},
		// Type 0x0400 with length 0 and the cookie looks like the start of a
		// WireGuard transport header, but is 20 bytes: STUN.
		{"stun type 0x0400", stunMsg(0x0400, 0), KindSTUN},
		{"relay", relayMsg(RelayMinLen), KindRelay},
		{"relay long", relayMsg(1500), KindRelay},
		{"relay short", relayMsg(RelayMinLen - 1), KindJunk},
		{"relay unknown version", func() []byte { b := relayMsg(100); b[1] = 1; return b }(), KindJunk},
		{"dns query", []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'w', 'w', 0, 0, 1, 0, 1}, KindJunk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.pkt); got != tt.want {
				t.Errorf("Classify(% x…) = %v, want %v", head(tt.pkt), got, tt.want)
			}
		})
	}
}

func head(b []byte) []byte {
	if len(b) > 8 {
		return b[:8]
	}
	return b
}

func FuzzClassify(f *testing.F) {
	f.Add([]byte{})
	f.Add(wgMsg(1, 148, [4]byte{}))             // initiation
	f.Add(wgMsg(2, 92, [4]byte{}))              // response
	f.Add(wgMsg(3, 64, [4]byte{}))              // cookie reply
	f.Add(wgMsg(4, 32, stunCookie))             // keepalive whose receiver index is the STUN cookie
	f.Add(stunMsg(0x0001, 0))                   // binding request
	f.Add(stunMsg(0x0101, 12))                  // binding success with an XOR-MAPPED-ADDRESS
	f.Add(relayMsg(RelayMinLen))                // smallest relay frame
	f.Add([]byte{0xF7, 0x02, 0, 0, 0, 0, 0, 0}) // relay magic, unknown version
	f.Fuzz(func(t *testing.T, b []byte) {
		k := Classify(b)
		wg := len(b) >= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0 &&
			((b[0] == 1 && len(b) == 148) || (b[0] == 2 && len(b) == 92) ||
				(b[0] == 3 && len(b) == 64) || (b[0] == 4 && len(b) >= 32))
		if wg != (k == KindWireGuard) {
			t.Fatalf("Classify(% x) = %v, but the WireGuard size rules say %v", head(b), k, wg)
		}
		if k == KindSTUN && (len(b) < 20 || b[0]&0xC0 != 0 || binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie) {
			t.Fatalf("Classify(% x) = stun without the STUN header", head(b))
		}
		if k == KindRelay && (len(b) < RelayMinLen || b[0] != RelayMagic) {
			t.Fatalf("Classify(% x) = relay without the relay prefix", head(b))
		}
	})
}
