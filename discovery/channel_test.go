package discovery

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// inbox collects what a channel handler receives.
type inbox struct {
	mu   sync.Mutex
	msgs []received
}

type received struct {
	from key.Public
	msg  []byte
}

func (b *inbox) handle(from key.Public, msg []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs = append(b.msgs, received{from, msg})
}

func (b *inbox) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.msgs)
}

func (b *inbox) has(from key.Public, msg []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.msgs {
		if m.from == from && bytes.Equal(m.msg, msg) {
			return true
		}
	}
	return false
}

func TestChannelCrossesARelay(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	c := newTestRouter(t, "c")
	boxes := map[*testRouter]*inbox{}
	chans := map[*testRouter]*Channel{}
	for _, r := range []*testRouter{a, b, c} {
		boxes[r] = &inbox{}
		ch, err := r.Channel("test", boxes[r].handle)
		if err != nil {
			t.Fatal(err)
		}
		chans[r] = ch
		// a and c advertise a port nobody listens on, so they stay
		// connected only through b.
		if r != b {
			r.mu.Lock()
			r.selfRec.Port, r.port = 1, 1
			r.bumpSelfLocked()
			r.mu.Unlock()
		}
	}
	if _, err := a.Channel("test", nil); err == nil {
		t.Error("registering a channel twice succeeded")
	}
	a.Connect(b.addr())
	c.Connect(b.addr())
	waitFor(t, 5*time.Second, "a routes to c through b", func() bool {
		hop, _ := a.NextHop(c.Self())
		hop2, _ := c.NextHop(a.Self())
		return hop == b.Self() && hop2 == b.Self()
	})

	if err := chans[a].Send(c.Self(), []byte("to c")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "c receives a's message via b", func() bool { return boxes[c].has(a.Self(), []byte("to c")) })
	if boxes[b].has(a.Self(), []byte("to c")) {
		t.Error("the relay delivered a message addressed to c")
	}
	if b.Counters()[CtrChannelForwarded] == 0 {
		t.Error("b did not count the forwarded message")
	}

	chans[c].Broadcast([]byte("all"))
	waitFor(t, 5*time.Second, "broadcast reaches a and b", func() bool {
		return boxes[a].has(c.Self(), []byte("all")) && boxes[b].has(c.Self(), []byte("all"))
	})
	if boxes[c].has(c.Self(), []byte("all")) {
		t.Error("broadcast came back to its sender")
	}

	var nobody key.Public
	nobody[0] = 9
	if err := chans[a].Send(nobody, []byte("x")); err == nil {
		t.Error("Send to an unknown peer succeeded")
	}
}

func TestChannelMessageRoundTrip(t *testing.T) {
	priv := newKey(t)
	m := ChannelMessage{Name: "ipam", Hops: 7, Src: priv.Public(), Payload: []byte{1, 2, 3}}
	m.Dst[31] = 2
	m.Sign(priv)
	b, err := AppendChannelMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseChannelMessage(b)
	if err != nil || got.Name != m.Name || got.Src != m.Src || got.Dst != m.Dst || got.Hops != 7 || !bytes.Equal(got.Payload, m.Payload) || got.Sig != m.Sig {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	if err := got.Verify(); err != nil {
		t.Fatalf("signature: %v", err)
	}
	// Relays change the hop count: the signature still holds. Anything
	// else changed breaks it.
	got.Hops = 1
	if err := got.Verify(); err != nil {
		t.Errorf("signature after a hop: %v", err)
	}
	for name, mut := range map[string]func(*ChannelMessage){
		"dst":       func(m *ChannelMessage) { m.Dst[0] ^= 1 },
		"src":       func(m *ChannelMessage) { m.Src = newKey(t).Public() },
		"payload":   func(m *ChannelMessage) { m.Payload = []byte{1, 2, 4} },
		"name":      func(m *ChannelMessage) { m.Name = "dns" },
		"broadcast": func(m *ChannelMessage) { m.Broadcast = true },
	} {
		c := got
		mut(&c)
		if c.Verify() == nil {
			t.Errorf("signature holds after changing %s", name)
		}
	}
	// A broadcast's signature does not cover dst.
	bc := ChannelMessage{Name: "dns", Broadcast: true, Src: priv.Public(), Payload: []byte("x")}
	bc.Sign(priv)
	bc.Dst[0] = 7
	if err := bc.Verify(); err != nil {
		t.Errorf("broadcast with its destination set: %v", err)
	}
	for _, bad := range [][]byte{nil, {msgChannel}, {msgChannel, 0, 0}, {msgChannel, 0, 40}, {msgChannel, 0, 4, 'i', 'p'}, {msgChannel, 2, 1, 'x'}} {
		if _, err := ParseChannelMessage(bad); err == nil {
			t.Errorf("ParseChannelMessage(%v) succeeded", bad)
		}
	}
	short := b[:len(b)-1-len(m.Payload)-key.SigLen+1]
	if _, err := ParseChannelMessage(short); err == nil {
		t.Errorf("message without its signature parsed")
	}
	if _, err := AppendChannelMessage(nil, ChannelMessage{Name: "x", Payload: make([]byte, MaxChannelPayload+1)}); err == nil {
		t.Error("oversized payload accepted")
	}
}

// TestChannelMessageGolden pins the v2 channel message layout.
func TestChannelMessageGolden(t *testing.T) {
	m := ChannelMessage{Name: "ipam", Broadcast: true, Src: seqKey(0x00), Dst: seqKey(0x20), Hops: 64, Payload: []byte{0xaa, 0xbb}}
	for i := range m.Sig {
		m.Sig[i] = 0xc0 + byte(i%16)
	}
	want := strings.Join([]string{
		"04",       // type
		"01",       // flags: broadcast
		"04",       // name length
		"6970616d", // "ipam"
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", // src
		"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f", // dst
		"40",   // hops
		"aabb", // payload
		strings.Repeat("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf", 4), // signature
	}, "")
	b, err := AppendChannelMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, want)
	}
	got, err := ParseChannelMessage(b)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("parsed %+v, %v", got, err)
	}
}

func FuzzParseChannelMessage(f *testing.F) {
	m := ChannelMessage{Name: "dns", Hops: 3, Payload: []byte("hello")}
	seed, _ := AppendChannelMessage(nil, m)
	f.Add(seed)
	m.Broadcast, m.Payload = true, nil
	seed, _ = AppendChannelMessage(nil, m)
	f.Add(seed)
	f.Add([]byte{msgChannel, 0, 1, 'x'})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseChannelMessage(b)
		if err != nil {
			return
		}
		again, err := AppendChannelMessage(nil, m)
		if err != nil {
			return // payload too large for a frame: the sender could not have made it
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %x vs %x", again, b)
		}
	})
}
