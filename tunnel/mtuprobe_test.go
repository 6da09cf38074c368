package tunnel

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// Golden layout of an MTU probe: header, timestamp, size, path, zeros, MAC,
// padding.
func TestMTUProbeLayout(t *testing.T) {
	var k [32]byte
	hdr := RelayHeader{Type: RelayTypeMTUProbe, HopLimit: 1, Dst: PeerID{1, 2, 3, 4, 5, 6, 7, 8}, Src: PeerID{9, 10, 11, 12, 13, 14, 15, 16}}
	f := appendMTUProbe(nil, &k, hdr, 0x0102030405060708, 100, mtuPathRelayed)
	want := []byte{
		0xF7, 2, 3, 1, // magic, version, type 3, hop limit
		1, 2, 3, 4, 5, 6, 7, 8, // destination
		9, 10, 11, 12, 13, 14, 15, 16, // source
		0, 0, 0, 0, 0, 0, 0, 0, // hop counter: sealed when sent
		0, 0, 0, 0, 0, 0, 0, 0, // hop MAC
		1, 2, 3, 4, 5, 6, 7, 8, // timestamp
		0, 100, // size
		1,             // path: relayed
		0, 0, 0, 0, 0, // zero
	}
	if len(f) != 100 || !bytes.Equal(f[:len(want)], want) {
		t.Fatalf("probe % x", f)
	}
	m := mtuMAC(&k, f)
	if !bytes.Equal(f[mtuOffMAC:mtuReplyLen], m[:]) || !bytes.Equal(f[mtuReplyLen:], make([]byte, 100-mtuReplyLen)) {
		t.Fatalf("MAC or padding wrong: % x", f[mtuOffMAC:])
	}
}

func TestMTUProbeAnswerAndReply(t *testing.T) {
	f := newRelayFixture(t)
	f.inner.keep = true
	now := time.Unix(1000, 0)
	f.bind.now = func() time.Time { return now }
	self, a := PeerIDOf(f.self), PeerIDOf(f.a)

	// a probes us with 1400 bytes: we answer with 52, naming 1400, signed
	// with the pair key, straight back.
	probe := appendMTUProbe(nil, testPairKey(f.a), RelayHeader{Type: RelayTypeMTUProbe, HopLimit: 1, Dst: self, Src: a}, 42, 1400, mtuPathDirect)
	bt := newBatch()
	bt.fill(hopFrom(probe, f.a), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	r := f.inner.last
	h, _, err := ParseRelayHeader(r)
	if err != nil || h.Type != RelayTypeMTUReply || h.Dst != a || h.Src != self || len(r) != mtuReplyLen ||
		binary.BigEndian.Uint16(r[mtuOffSize:]) != 1400 || epAddr(f.inner.lastEP) != "192.0.2.1:6783" {
		t.Fatalf("reply %+v len %d to %s: %v", h, len(r), epAddr(f.inner.lastEP), err)
	}
	if m := mtuMAC(testPairKey(f.a), r); !bytes.Equal(m[:], r[mtuOffMAC:]) {
		t.Fatal("reply not signed with the pair key")
	}
	if f.bind.Counters()["udp_mtu_probes_answered"] != 1 {
		t.Fatal("answer not counted")
	}

	// A probe cut short on the way (its length is not its size) proves
	// nothing and is not answered.
	f.inner.sends = 0
	bt.fill(hopFrom(probe[:1000], f.a), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if f.inner.sends != 0 || f.bind.Counters()["udp_relay_dropped_malformed"] != 1 {
		t.Fatalf("truncated probe: %d sends, counters %v", f.inner.sends, f.bind.Counters())
	}
	// A probe under another key is dropped.
	bad := bytes.Clone(probe)
	bad[mtuOffMAC] ^= 1
	bt.fill(hopFrom(bad, f.a), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if f.inner.sends != 0 || f.bind.Counters()["udp_relay_dropped_bad_mac"] != 1 {
		t.Fatal("forged probe answered")
	}

	// a's reply to our probe of 1372 reaches the MTU loop's channel.
	now = now.Add(2 * time.Millisecond)
	reply := appendMTUProbe(nil, testPairKey(f.a), RelayHeader{Type: RelayTypeMTUReply, HopLimit: 1, Dst: self, Src: a}, now.Add(-2*time.Millisecond).UnixNano(), 1372, mtuPathDirect)[:mtuReplyLen]
	binary.BigEndian.PutUint16(reply[mtuOffSize:], 1372)
	m := mtuMAC(testPairKey(f.a), reply)
	copy(reply[mtuOffMAC:], m[:])
	bt.fill(hopFrom(reply, f.a), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	select {
	case got := <-f.bind.mtuAnswers:
		if got.peer != a || got.size != 1372 || got.path != mtuPathDirect || got.sent != now.Add(-2*time.Millisecond).UnixNano() {
			t.Fatalf("answer %+v", got)
		}
	default:
		t.Fatalf("no answer handed over; counters %v", f.bind.Counters())
	}
	// The same "direct" reply from another address is not evidence.
	bt.fill(hopFrom(reply, f.a), "192.0.2.2:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	select {
	case got := <-f.bind.mtuAnswers:
		t.Fatalf("a direct answer from elsewhere was taken: %+v", got)
	default:
	}
}

// Answering probes takes no allocation (the packet path).
func TestMTUProbeAnswerAllocs(t *testing.T) {
	f := newRelayFixture(t)
	self, a := PeerIDOf(f.self), PeerIDOf(f.a)
	probe := appendMTUProbe(nil, testPairKey(f.a), RelayHeader{Type: RelayTypeMTUProbe, HopLimit: 1, Dst: self, Src: a}, 42, 1400, mtuPathDirect)
	bt := newBatch()
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps) // warm the pools
	k := hopKeyOf(testPairKey(f.a), a)
	allocs := testing.AllocsPerRun(100, func() {
		sealHop(probe, k, testHopCtr.Add(1))
		bt.fill(probe, "192.0.2.1:6783")
		f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per probe answered", allocs)
	}
}

// FuzzMTUProbe feeds arbitrary relay frames of the MTU types to the Bind: it
// must never panic, and never answer what does not verify.
func FuzzMTUProbe(f *testing.F) {
	var k [32]byte
	f.Add(appendMTUProbe(nil, &k, RelayHeader{Type: RelayTypeMTUProbe, HopLimit: 1}, 1, 60, 0))
	f.Add(appendMTUProbe(nil, &k, RelayHeader{Type: RelayTypeMTUReply, HopLimit: 1}, 1, mtuReplyLen, 1)[:mtuReplyLen])
	f.Add([]byte{0xF7, 2, 3, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		fx := newRelayFixture(t)
		self, a := PeerIDOf(fx.self), PeerIDOf(fx.a)
		if len(data) < RelayHeaderLen {
			return
		}
		typ := RelayTypeMTUProbe + data[0]%2
		frame := AppendRelayHeader(nil, RelayHeader{Type: typ, HopLimit: 1, Dst: self, Src: a})
		frame = append(frame, data[RelayHeaderLen:]...)
		if len(frame) > 2048 {
			return
		}
		hopFrom(frame, fx.a) // a valid hop: the body's MAC must still stop it
		bt := newBatch()
		bt.fill(frame, "192.0.2.1:6783")
		fx.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
		if fx.inner.sends != 0 {
			t.Fatalf("answered an unsigned frame % x", frame)
		}
	})
}
