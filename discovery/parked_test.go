package discovery

import (
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// A relay with no route yet towards a channel message's destination holds
// it and forwards it once a route appears; one held past parkFor is
// dropped and counted.
func TestRelayParksUntilRoute(t *testing.T) {
	r, c := digestRouter(t) // c: the connection to seqKey(10)
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	srcPriv := newKey(t)
	msg := func(dst byte) []byte {
		m := ChannelMessage{Name: "dns", Src: srcPriv.Public(), Dst: seqKey(dst), Hops: 5, Payload: []byte("x")}
		m.Sign(srcPriv)
		b, err := AppendChannelMessage(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.handleChannelLocked(msg(11)); err != nil {
		t.Fatal(err)
	}
	if err := r.handleChannelLocked(msg(12)); err != nil {
		t.Fatal(err)
	}
	if n := len(drain(c)); n != 0 {
		t.Fatalf("forwarded %d messages with no route", n)
	}
	// A route to seqKey(11) through c appears.
	r.rt = graph([]key.Public{r.self, c.peer, seqKey(11)}, [][2]int{{0, 1}, {1, 2}}).routes(r.self)
	r.retryParkedLocked()
	got := drain(c)
	if len(got) != 1 {
		t.Fatalf("after the route appeared: %d messages forwarded, want 1", len(got))
	}
	if m, err := ParseChannelMessage(got[0]); err != nil || m.Dst != seqKey(11) || m.Hops != 4 {
		t.Fatalf("forwarded %+v (%v); want the message to seqKey(11), one hop less", m, err)
	}
	now = now.Add(parkFor + time.Second)
	r.retryParkedLocked()
	if len(r.parked) != 0 || r.ctr.snapshot()[CtrChannelNoRoute] != 1 {
		t.Fatalf("past parkFor: %d held, %d counted as no route; want 0 and 1", len(r.parked), r.ctr.snapshot()[CtrChannelNoRoute])
	}
}
