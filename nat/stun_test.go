package nat

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

var goldenTxID = [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

// goldenRequest is a credential-less Binding request, as a STUN client
// (pion's server-reflexive gathering) sends.
var goldenRequest = []byte{
	0x00, 0x01, 0x00, 0x08, // Binding request, 8 bytes of attributes
	0x21, 0x12, 0xa4, 0x42, // magic cookie
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, // transaction ID
	0x80, 0x28, 0x00, 0x04, 0x5b, 0x20, 0xf9, 0xcc, // FINGERPRINT
}

// goldenResponse is the responder's answer to goldenRequest from
// 192.0.2.1:6783.
var goldenResponse = []byte{
	0x01, 0x01, 0x00, 0x14, // Binding success, 20 bytes of attributes
	0x21, 0x12, 0xa4, 0x42, // magic cookie
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, // transaction ID
	0x00, 0x20, 0x00, 0x08, // XOR-MAPPED-ADDRESS, 8 bytes
	0x00, 0x01, // reserved, family IPv4
	0x3b, 0x6d, // port 6783 ^ 0x2112
	0xe1, 0x12, 0xa6, 0x43, // 192.0.2.1 ^ 0x2112a442
	0x80, 0x28, 0x00, 0x04, 0x67, 0x05, 0xda, 0x18, // FINGERPRINT
}

func TestResponderGolden(t *testing.T) {
	if got := appendBindingRequest(nil, goldenTxID); !bytes.Equal(got, goldenRequest) {
		t.Fatalf("request\n got % x\nwant % x", got, goldenRequest)
	}
	src := netip.MustParseAddrPort("192.0.2.1:6783")
	var out []byte
	var to netip.AddrPort
	r := NewResponder(func(p []byte, dst netip.AddrPort) error { out, to = append([]byte(nil), p...), dst; return nil }, nil)
	if !r.Handle(goldenRequest, src) {
		t.Fatal("request not taken")
	}
	if !bytes.Equal(out, goldenResponse) || to != src {
		t.Fatalf("response to %v\n got % x\nwant % x", to, out, goldenResponse)
	}
	// An independent decoder agrees.
	m := &stun.Message{Raw: append([]byte(nil), out...)}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
	var x stun.XORMappedAddress
	if err := x.GetFrom(m); err != nil || x.Port != 6783 || !x.IP.Equal(src.Addr().AsSlice()) {
		t.Fatalf("XOR-MAPPED-ADDRESS %v, %v", x, err)
	}
	if got, ok := parseXORMappedAddress(out); !ok || got != src {
		t.Fatalf("parseXORMappedAddress = %v, %v", got, ok)
	}
	// IPv6 round trip.
	v6 := netip.MustParseAddrPort("[2001:db8::1]:443")
	if got, ok := parseXORMappedAddress(appendBindingResponse(nil, goldenTxID, v6)); !ok || got != v6 {
		t.Fatalf("v6: %v, %v", got, ok)
	}
}

func TestResponderIgnoresAndLimits(t *testing.T) {
	now := time.Unix(1000, 0)
	sent := 0
	r := NewResponder(func([]byte, netip.AddrPort) error { sent++; return nil }, func() time.Time { return now })
	src := netip.MustParseAddrPort("192.0.2.1:6783")
	check, _ := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername("a:b"), stun.NewShortTermIntegrity("p"), stun.Fingerprint)
	answer := appendBindingResponse(nil, goldenTxID, src)
	for _, tt := range []struct {
		name string
		pkt  []byte
	}{{"ICE check", check.Raw}, {"a response", answer}, {"junk", []byte{1, 2, 3}}} {
		if r.Handle(tt.pkt, src) {
			t.Errorf("%s: taken", tt.name)
		}
	}
	for range responderBurst + 10 {
		r.Handle(goldenRequest, src)
	}
	if sent != responderBurst || r.ctr.c[cSTUNRateLimited].Load() != 10 {
		t.Fatalf("sent %d, limited %d", sent, r.ctr.c[cSTUNRateLimited].Load())
	}
	now = now.Add(time.Second)
	r.Handle(goldenRequest, src)
	if sent != responderBurst+1 {
		t.Fatalf("after a second: sent %d", sent)
	}
}

func TestParseSTUN(t *testing.T) {
	withAttr := func(typ uint16, val []byte, declared int) []byte {
		b := append([]byte(nil), goldenRequest[:20]...)
		b = append(b, byte(typ>>8), byte(typ), byte(declared>>8), byte(declared))
		b = append(b, val...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		n := len(b) - 20
		b[2], b[3] = byte(n>>8), byte(n)
		return b
	}
	tests := []struct {
		name string
		pkt  []byte
		err  error
	}{
		{"golden request", goldenRequest, nil},
		{"golden response", goldenResponse, nil},
		{"short", goldenRequest[:19], ErrNotSTUN},
		{"top bits", append([]byte{0xC0}, goldenRequest[1:]...), ErrNotSTUN},
		{"length mismatch", goldenRequest[:24], ErrNotSTUN},
		{"username", withAttr(attrUsername, []byte("ab:cd"), 5), nil},
		{"attribute longer than message", withAttr(attrUsername, []byte("abcd"), 40), ErrSTUNTruncated},
		{"empty attribute", withAttr(0x8022, nil, 0), nil},
		{"bad fingerprint", append(append([]byte(nil), goldenRequest[:24]...), 0, 0, 0, 0), ErrSTUNFingerprint},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := tt.pkt
			if tt.name == "bad fingerprint" {
				pkt[2], pkt[3] = 0, 8
			}
			_, err := parseSTUN(pkt)
			if err != tt.err {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
		})
	}
	m, _ := parseSTUN(withAttr(attrUsername, []byte("ab:cd"), 5))
	if m.ufrag() != "ab" || m.class() != classRequest || m.method() != 1 {
		t.Fatalf("parsed %+v", m)
	}
}

// FuzzParseSTUN: parseSTUN never panics, and what it accepts has a STUN
// header and whole attributes; pion's decoder accepts it too.
func FuzzParseSTUN(f *testing.F) {
	f.Add(goldenRequest)
	f.Add(goldenResponse)
	check, _ := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername("abcd:efgh"), stun.NewShortTermIntegrity("pw"), stun.Fingerprint)
	f.Add(check.Raw)
	f.Add([]byte{0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 6, 0, 9}) // truncated USERNAME
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSTUN(b)
		if err != nil {
			return
		}
		if len(b) < stunHeaderLen || b[0]&0xC0 != 0 || (len(b)-stunHeaderLen)%4 != 0 {
			t.Fatalf("accepted % x", b)
		}
		pm := &stun.Message{Raw: append([]byte(nil), b...)}
		if err := pm.Decode(); err != nil {
			t.Fatalf("pion rejects what we accept (% x): %v", b, err)
		}
		if m.username != nil {
			if u, err := pm.Get(stun.AttrUsername); err != nil || !bytes.Equal(u, m.username) {
				t.Fatalf("username %q vs pion %q", m.username, u)
			}
		}
		parseXORMappedAddress(b)
	})
}
