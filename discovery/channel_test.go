package discovery

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// inbox collects what a channel handler receives.
type inbox struct {
	mu   sync.Mutex
	msgs []channelDelivery
}

func (b *inbox) handle(from key.Public, msg []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs = append(b.msgs, channelDelivery{from, msg})
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
	m := ChannelMessage{Name: "ipam", Hops: 7, Payload: []byte{1, 2, 3}}
	m.Src[0], m.Dst[31] = 1, 2
	b, err := AppendChannelMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseChannelMessage(b)
	if err != nil || got.Name != m.Name || got.Src != m.Src || got.Dst != m.Dst || got.Hops != 7 || !bytes.Equal(got.Payload, m.Payload) {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {msgChannel}, {msgChannel, 0}, {msgChannel, 40}, {msgChannel, 4, 'i', 'p'}} {
		if _, err := ParseChannelMessage(bad); err == nil {
			t.Errorf("ParseChannelMessage(%v) succeeded", bad)
		}
	}
	if _, err := AppendChannelMessage(nil, ChannelMessage{Name: "x", Payload: make([]byte, MaxChannelPayload+1)}); err == nil {
		t.Error("oversized payload accepted")
	}
}

func FuzzParseChannelMessage(f *testing.F) {
	m := ChannelMessage{Name: "dns", Hops: 3, Payload: []byte("hello")}
	seed, _ := AppendChannelMessage(nil, m)
	f.Add(seed)
	f.Add([]byte{msgChannel, 1, 'x'})
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
