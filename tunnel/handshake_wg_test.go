package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/types/key"
)

// lossyBind loses the first handshake message of one type it is asked to
// send (as a relay forwarding to a NAT port that drops it does) and records
// every message of that type.
type lossyBind struct {
	conn.Bind
	typ byte

	mu   sync.Mutex
	lost bool
	sent [][]byte
}

func (l *lossyBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	l.mu.Lock()
	keep := bufs[:0:0]
	for _, b := range bufs {
		if handshakeType(b) == l.typ {
			l.sent = append(l.sent, bytes.Clone(b))
			if !l.lost {
				l.lost = true
				continue
			}
		}
		keep = append(keep, b)
	}
	l.mu.Unlock()
	if len(keep) == 0 {
		return nil
	}
	return l.Bind.Send(keep, ep)
}

// senders is the sender index of each message recorded.
func (l *lossyBind) senders() []uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []uint32
	for _, m := range l.sent {
		out = append(out, binary.LittleEndian.Uint32(m[4:8]))
	}
	return out
}

// hsDevicePair is two wireguard-go devices, each on a Bind of ours over inner,
// with relay tables naming each other (so the Binds know who sent what).
// Each knows where the other is, as gossip tells. The path loop's part
// (retransmitHandshakes) runs every 50 ms.
type hsDevicePair struct {
	bind [2]*Bind
	tuns [2]*tuntest.ChannelTUN
	ips  [2]netip.Addr
}

func newHSDevicePair(t *testing.T, inner [2]conn.Bind) *hsDevicePair {
	w := &hsDevicePair{ips: [2]netip.Addr{netip.MustParseAddr("10.32.0.1"), netip.MustParseAddr("10.32.0.2")}}
	var priv [2]key.Private
	for i := range 2 {
		var err error
		if priv[i], err = key.NewPrivate(); err != nil {
			t.Fatal(err)
		}
	}
	// bindtest's addresses: 0 sends to 127.0.0.1:1 and hears 1 from :3;
	// 1 hears 0 from :4 and answers there.
	sendTo := [2]string{"127.0.0.1:1", "127.0.0.1:4"}
	hearFrom := [2]string{"127.0.0.1:3", "127.0.0.1:4"}
	for i := range 2 {
		o := 1 - i
		w.bind[i] = NewBind(inner[i], netns.None())
		peer := PeerConfig{Key: priv[o].Public(), Endpoint: netip.MustParseAddrPort(hearFrom[i])}
		paths := map[key.Public]reach.Path{peer.Key: {Endpoint: netip.MustParseAddrPort(sendTo[i])}}
		w.bind[i].setRelayTable(buildRelayTable(PeerIDOf(priv[i].Public()), []PeerConfig{peer}, map[key.Public]*pathState{},
			paths, testPairKey, inner[i].ParseEndpoint, time.Now().UnixNano()))
		w.tuns[i] = tuntest.NewChannelTUN()
		dev := device.NewDevice(w.tuns[i].TUN(), w.bind[i], device.NewLogger(device.LogLevelSilent, ""))
		t.Cleanup(dev.Close)
		cfg := fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\nallowed_ip=%s/32\n", priv[i].Hex(), priv[o].Public().Hex(), sendTo[i], w.ips[o])
		if err := dev.IpcSet(cfg); err != nil {
			t.Fatal(err)
		}
		if err := dev.Up(); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				w.bind[0].retransmitHandshakes()
				w.bind[1].retransmitHandshakes()
			}
		}
	}()
	return w
}

// ping sends a ping from device i into the tunnel and waits for it at the
// other device.
func (w *hsDevicePair) ping(t *testing.T, i int) {
	t.Helper()
	o := 1 - i
	ping := tuntest.Ping(w.ips[o], w.ips[i])
	w.tuns[i].Outbound <- ping
	w.expect(t, o, ping)
}

func (w *hsDevicePair) expect(t *testing.T, at int, ping []byte) {
	t.Helper()
	select {
	case got := <-w.tuns[at].Inbound:
		if !bytes.Equal(got, ping) {
			t.Fatalf("device %d got %x, want the ping", at, got)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the ping to device %d never arrived", at)
	}
}

// TestHandshakeLostFirstMessage runs two real wireguard-go devices over an
// in-memory link that loses the first initiation (or the first response)
// and sends one ping. wireguard-go alone answers that loss only with a new
// initiation after its RekeyTimeout (5 s); the Bind's copy of the lost
// message gets the ping through instead. Told apart without a clock: the
// message that got through carries the same sender index as the lost one
// (a copy), where wireguard-go's own retry would carry a new one.
func TestHandshakeLostFirstMessage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		typ   byte
		lossy int // which device's link loses it: 0 the initiator, 1 the responder
	}{
		{"initiation lost", wgTypeInitiation, 0},
		{"response lost", wgTypeResponse, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			binds := bindtest.NewChannelBinds()
			lossy := &lossyBind{Bind: binds[tc.lossy], typ: tc.typ}
			inner := [2]conn.Bind{binds[0], binds[1]}
			inner[tc.lossy] = lossy
			w := newHSDevicePair(t, inner)
			w.ping(t, 0)
			s := lossy.senders()
			if len(s) < 2 {
				t.Fatalf("%d messages of type %d sent, want the lost one and a copy", len(s), tc.typ)
			}
			if s[1] != s[0] {
				t.Errorf("sender indexes %v: the second message was wireguard-go's own retry, not a copy of the lost one", s)
			}
			// The copy is counted once its send returns, which can be after
			// the handshake it completed and the ping: wait for the count.
			deadline := time.Now().Add(5 * time.Second)
			for w.bind[tc.lossy].Counters()[CounterHandshakeRetransmits] == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%s = 0", CounterHandshakeRetransmits)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// crossingGate makes two initiations cross: neither side receives
// anything until both have sent their first initiation.
type crossingGate struct {
	mu       sync.Mutex
	sent     int
	released chan struct{}
}

func (g *crossingGate) arrive() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sent++; g.sent == 2 {
		close(g.released)
	}
}

func (g *crossingGate) wait() {
	select {
	case <-g.released:
	case <-time.After(5 * time.Second): // one side never sent: the test fails below
	}
}

// crossingBind is one side's link through a crossingGate; it records the
// sender index of every initiation sent.
type crossingBind struct {
	conn.Bind
	gate *crossingGate
	once sync.Once

	mu   sync.Mutex
	sent []uint32
}

func (c *crossingBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := c.Bind.Open(port)
	for i, fn := range fns {
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			c.gate.wait()
			return fn(bufs, sizes, eps)
		}
	}
	return fns, actual, err
}

func (c *crossingBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	err := c.Bind.Send(bufs, ep)
	for _, b := range bufs {
		if handshakeType(b) == wgTypeInitiation {
			c.mu.Lock()
			c.sent = append(c.sent, binary.LittleEndian.Uint32(b[4:8]))
			c.mu.Unlock()
			c.once.Do(c.gate.arrive)
		}
	}
	return err
}

func (c *crossingBind) senders() []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint32(nil), c.sent...)
}

// TestHandshakeCrossingDevices: both devices start a handshake at once (a
// ping each) and the initiations cross. wireguard-go alone has each consume
// the other's, refuse the other's response, and retry after 5 s; with the
// relay IDs deciding (TestHandshakeCrossing), one handshake completes and
// both pings arrive without a second initiation from either side.
func TestHandshakeCrossingDevices(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	gate := &crossingGate{released: make(chan struct{})}
	cross := [2]*crossingBind{{Bind: binds[0], gate: gate}, {Bind: binds[1], gate: gate}}
	w := newHSDevicePair(t, [2]conn.Bind{cross[0], cross[1]})
	pings := [2][]byte{tuntest.Ping(w.ips[1], w.ips[0]), tuntest.Ping(w.ips[0], w.ips[1])}
	w.tuns[0].Outbound <- pings[0]
	w.tuns[1].Outbound <- pings[1]
	w.expect(t, 1, pings[0])
	w.expect(t, 0, pings[1])
	for i, c := range cross {
		if s := c.senders(); len(s) != 1 {
			t.Errorf("device %d sent initiations %v, want one: the crossing was resolved by wireguard-go's retry", i, s)
		}
	}
	dropped := w.bind[0].Counters()[CounterHandshakeCrossedDropped] + w.bind[1].Counters()[CounterHandshakeCrossedDropped]
	// Usually the smaller side drops the larger's initiation; when the
	// larger's response overtakes its own initiation (bindtest carries
	// the two on different channels), the smaller's handshake is already
	// answered and nothing needs dropping.
	if dropped > 1 {
		t.Errorf("crossing initiations dropped: %d, want at most 1", dropped)
	}
}
