package vxlan

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

var (
	testSecret = key.Secret{1, 2, 3}
	macA       = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa}
	macB       = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xb}
)

// The golden frame pins the wire format: a change here breaks mixed-version
// networks, so it must be deliberate.
const goldenProbe = "57575658010100000000000000bc614e"

func TestFrameGolden(t *testing.T) {
	k := probeKey(testSecret)
	f := appendFrame(nil, &k, TypeProbe, 12345678, macA, macB)
	if len(f) != frameLen {
		t.Fatalf("frame is %d bytes, want %d", len(f), frameLen)
	}
	if got := hex.EncodeToString(f[:16]); got != goldenProbe {
		t.Fatalf("header %s, want %s", got, goldenProbe)
	}
	typ, ts, err := parseFrame(f, &k, macA, macB)
	if err != nil || typ != TypeProbe || ts != 12345678 {
		t.Fatalf("parse: %d %d %v", typ, ts, err)
	}
	// Padding after the frame is ignored.
	if _, _, err := parseFrame(append(bytes.Clone(f), make([]byte, 14)...), &k, macA, macB); err != nil {
		t.Fatalf("padded frame: %v", err)
	}
}

func TestFrameRejects(t *testing.T) {
	k := probeKey(testSecret)
	f := appendFrame(nil, &k, TypeReply, 1, macA, macB)
	other := probeKey(key.Secret{9})
	cases := []struct {
		name string
		b    []byte
		k    *[32]byte
		src  net.HardwareAddr
		want error
	}{
		{"short", f[:31], &k, macA, ErrShort},
		{"other network", f, &other, macA, ErrMAC},
		{"spoofed source", f, &k, macB, ErrMAC},
		{"magic", append([]byte("XXXX"), f[4:]...), &k, macA, ErrMagic},
		{"version", append(append(bytes.Clone(f[:4]), 9), f[5:]...), &k, macA, ErrVersion},
		{"type", append(append(bytes.Clone(f[:5]), 7), f[6:]...), &k, macA, ErrType},
	}
	for _, c := range cases {
		if _, _, err := parseFrame(c.b, c.k, c.src, macB); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func FuzzParseFrame(f *testing.F) {
	k := probeKey(testSecret)
	f.Add(appendFrame(nil, &k, TypeProbe, 1, macA, macB))
	f.Add([]byte("WWVX"))
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, _, err := parseFrame(b, &k, macA, macB)
		if err == nil && typ != TypeProbe && typ != TypeReply {
			t.Fatalf("accepted type %d", typ)
		}
	})
}

func TestMACAndVNI(t *testing.T) {
	var k1, k2 key.Public
	k2[0] = 1
	m1, m2 := MACOf(k1), MACOf(k2)
	if bytes.Equal(m1, m2) {
		t.Fatal("two keys share a MAC")
	}
	for _, m := range []net.HardwareAddr{m1, m2} {
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("%s is not a locally administered unicast address", m)
		}
	}
	if !bytes.Equal(MACOf(k1), m1) {
		t.Fatal("MAC not stable")
	}
	if v := VNIOf(testSecret); v == 0 || v >= 1<<24 || v != VNIOf(testSecret) || v == VNIOf(key.Secret{9}) {
		t.Fatalf("VNI %d", v)
	}
}
