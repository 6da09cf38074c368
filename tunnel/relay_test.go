package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/types/key"
)

// The golden header: a data frame forwarded by a relay, hop limit 15,
// destination 01..08, source 11..18, hop counter 0x2122…28, hop MAC 31..38.
var goldenHeader = []byte{
	0xF7, 0x02, // magic, version 2
	0x00, 0x8F, // type data; F bit (forwarded), hop limit 15
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // destination peer ID
	0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // source peer ID
	0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // hop counter
	0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, // hop MAC
}

func TestRelayHeaderGolden(t *testing.T) {
	h := RelayHeader{Type: RelayTypeData, HopLimit: 15, Forwarded: true,
		Dst: PeerID{1, 2, 3, 4, 5, 6, 7, 8}, Src: PeerID{0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18},
		Counter: 0x2122232425262728, MAC: [8]byte{0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38}}
	got := AppendRelayHeader(nil, h)
	if !bytes.Equal(got, goldenHeader) {
		t.Fatalf("AppendRelayHeader = % x, want % x", got, goldenHeader)
	}
	if len(got) != RelayHeaderLen || RelayHeaderLen != RelayMinLen {
		t.Fatalf("header is %d bytes; RelayHeaderLen %d, RelayMinLen %d", len(got), RelayHeaderLen, RelayMinLen)
	}
	back, payload, err := ParseRelayHeader(append(got, 0xAA))
	if err != nil || back != h || !bytes.Equal(payload, []byte{0xAA}) {
		t.Fatalf("ParseRelayHeader = %+v, % x, %v", back, payload, err)
	}
	if Classify(append(got, make([]byte, 32)...)) != KindRelay {
		t.Errorf("a relay frame is not classified as relay")
	}
}

func TestParseRelayHeaderErrors(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"short", goldenHeader[:RelayHeaderLen-1], ErrRelayShort},
		{"magic", append([]byte{0xF6}, goldenHeader[1:]...), ErrRelayMagic},
		{"version 1", append([]byte{0xF7, 1}, goldenHeader[2:]...), ErrRelayVersion},
		{"type 5", append([]byte{0xF7, 2, 5}, goldenHeader[3:]...), ErrRelayType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := ParseRelayHeader(tt.b); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzParseRelayHeader(f *testing.F) {
	f.Add(goldenHeader)
	f.Add(append(append([]byte{}, goldenHeader...), 4, 0, 0, 0)) // + start of a WireGuard message
	f.Add([]byte{0xF7, 0x02, 0x02, 0x01})                        // probe reply, truncated
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, err := ParseRelayHeader(b)
		if err != nil {
			return
		}
		// Parse, append, parse again gives the same.
		again := AppendRelayHeader(nil, h)
		if !bytes.Equal(again, b[:RelayHeaderLen]) {
			t.Fatalf("re-encoded % x, input % x", again, b[:RelayHeaderLen])
		}
		if len(payload) != len(b)-RelayHeaderLen {
			t.Fatalf("payload %d bytes of %d", len(payload), len(b))
		}
	})
}

func TestRelayEndpointText(t *testing.T) {
	id := PeerID{0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3}
	e, err := ParseRelayEndpoint("relay:deadbeef00010203")
	if err != nil || e.ID() != id || e.DstToString() != "relay:deadbeef00010203" {
		t.Fatalf("ParseRelayEndpoint = %v, %v", e, err)
	}
	if !e.DstIP().Is6() || e.DstIP() == newRelayEndpoint(PeerID{}).DstIP() {
		t.Errorf("DstIP %v must be a per-peer IPv6 address", e.DstIP())
	}
	for _, bad := range []string{"relay:", "relay:xyz", "relay:deadbeef0001020304", "192.0.2.1:6783"} {
		if _, err := ParseRelayEndpoint(bad); err == nil {
			t.Errorf("ParseRelayEndpoint(%q) succeeded", bad)
		}
	}
	b := NewBind(newSinkBind(), netns.None())
	ep, err := b.ParseEndpoint("relay:deadbeef00010203")
	if _, ok := ep.(*RelayEndpoint); err != nil || !ok {
		t.Errorf("Bind.ParseEndpoint = %T, %v", ep, err)
	}
}

// sinkBind is an inner Bind that records the last send without allocating.
type sinkBind struct {
	fakeBind
	sends  int
	frames int
	lastEP conn.Endpoint
	last   []byte // copy of the last frame sent, when keep
	keep   bool
	err    error
}

func newSinkBind() *sinkBind { return &sinkBind{last: make([]byte, 0, 65536)} }

func (s *sinkBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	s.sends++
	s.frames += len(bufs)
	s.lastEP = ep
	if s.keep && len(bufs) > 0 {
		s.last = append(s.last[:0], bufs[len(bufs)-1]...)
	}
	return s.err
}

// relayFixture is a Bind with three peers: a (192.0.2.1), b (192.0.2.2) and
// c (192.0.2.3, relayed through b).
type relayFixture struct {
	bind          *Bind
	inner         *sinkBind
	self, a, b, c key.Public
	paths         map[key.Public]*pathState
	tbl           *relayTable
}

func relayTestKey(n byte) key.Public {
	var k key.Public
	k[0], k[31] = n, n
	return k
}

func newRelayFixture(t testing.TB) *relayFixture { return newRelayFixtureAs(t, relayTestKey(9)) }

// newRelayFixtureAs is newRelayFixture with self as our key.
func newRelayFixtureAs(t testing.TB, self key.Public) *relayFixture {
	f := &relayFixture{inner: newSinkBind(), self: self, a: relayTestKey(1), b: relayTestKey(2), c: relayTestKey(3), paths: map[key.Public]*pathState{}}
	f.bind = NewBind(f.inner, netns.None())
	now := time.Unix(1000, 0)
	f.bind.now = func() time.Time { return now }
	peers := []PeerConfig{
		{Key: f.a, Endpoint: netip.MustParseAddrPort("192.0.2.1:6783")},
		{Key: f.b, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783")},
		{Key: f.c, Endpoint: netip.MustParseAddrPort("192.0.2.3:6783"), Relay: f.b, Relayed: true},
	}
	paths := map[key.Public]reach.Path{
		f.a: {Endpoint: peers[0].Endpoint},
		f.b: {Endpoint: peers[1].Endpoint},
		f.c: {Endpoint: peers[2].Endpoint, Relayed: true, Via: f.b},
	}
	f.tbl = buildRelayTable(PeerIDOf(f.self), peers, f.paths, paths, testPairKey, f.inner.ParseEndpoint, now.UnixNano())
	f.bind.setRelayTable(f.tbl)
	f.bind.relayedN.Store(1)
	return f
}

func epAddr(ep conn.Endpoint) string {
	if ep == nil {
		return "<nil>"
	}
	return ep.DstToString()
}

// batch is one receive batch of a single datagram from src.
type batch struct {
	packets [][]byte
	sizes   []int
	eps     []conn.Endpoint
	src     *conn.StdNetEndpoint
}

func newBatch() *batch {
	return &batch{packets: [][]byte{make([]byte, 2048)}, sizes: []int{0}, eps: []conn.Endpoint{nil}, src: &conn.StdNetEndpoint{}}
}

func (bt *batch) fill(pkt []byte, src string) {
	bt.sizes[0] = copy(bt.packets[0], pkt)
	bt.src.AddrPort = netip.MustParseAddrPort(src)
	bt.eps[0] = bt.src
}

func wgTransport(n int) []byte {
	p := make([]byte, n)
	p[0] = wgTypeTransport
	for i := 16; i < n; i++ {
		p[i] = byte(i)
	}
	return p
}

// TestRelayReceive covers the receive decisions: deliver, forward, and the
// drops with their counters.
func TestRelayReceive(t *testing.T) {
	f := newRelayFixture(t)
	self, a, c := PeerIDOf(f.self), PeerIDOf(f.a), PeerIDOf(f.c)
	wg := wgTransport(100)
	var none key.Public
	// frame is a data frame; by is the hop's sender (none: the source,
	// first hop; else a relay, F bit set).
	frame := func(dst, src PeerID, hop uint8, payload []byte, by key.Public, srcKey key.Public) []byte {
		fr := append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: hop, Forwarded: by != none, Dst: dst, Src: src}), payload...)
		if by == none {
			by = srcKey
		}
		return hopFrom(fr, by)
	}
	var unknown PeerID
	unknown[0] = 0x77
	tests := []struct {
		name    string
		pkt     []byte
		from    string
		size    int    // size left in the batch: delivered
		ep      string // eps[0] after, when delivered
		sentTo  string // where a forward went, "" none
		counter string
		learned string // a's endpoint learned, "" none
	}{
		{"for us from relayed c via b", frame(self, c, 5, wg, f.b, f.c), "192.0.2.2:6783", len(wg), "relay:" + c.String(), "", "udp_relay_delivered", ""},
		{"for us from direct a", frame(self, a, 5, wg, none, f.a), "192.0.2.1:6783", len(wg), "192.0.2.1:6783", "", "udp_relay_delivered", ""},
		{"for us from a at a NAT's new port", frame(self, a, 5, wg, none, f.a), "203.0.113.5:49601", len(wg), "192.0.2.1:6783", "", "udp_relay_endpoints_learned", "203.0.113.5:49601"},
		{"for c from a: forward via b", frame(c, a, 5, wg, none, f.a), "192.0.2.1:6783", 0, "", "192.0.2.2:6783", "udp_relay_forwarded", ""},
		{"for a from c: forward straight to a", frame(a, c, 5, wg, f.b, f.c), "192.0.2.2:6783", 0, "", "192.0.2.1:6783", "udp_relay_forwarded", ""},
		{"forwarded, from a non-member address", frame(self, c, 5, wg, f.b, f.c), "192.0.2.99:6783", 0, "", "", "udp_relay_dropped_unknown_source", ""},
		{"forwarded, member IP, other port", frame(self, c, 5, wg, f.b, f.c), "192.0.2.2:4000", 0, "", "", "udp_relay_dropped_unknown_source", ""},
		{"unknown source peer", frame(self, unknown, 5, wg, none, f.a), "192.0.2.1:6783", 0, "", "", "udp_relay_dropped_unknown_peer", ""},
		{"unknown destination", frame(unknown, a, 5, wg, none, f.a), "192.0.2.1:6783", 0, "", "", "udp_relay_dropped_unknown_peer", ""},
		{"our own ID as source", frame(a, self, 5, wg, f.b, f.self), "192.0.2.2:6783", 0, "", "", "udp_relay_dropped_unknown_peer", ""},
		{"hop limit spent", frame(c, a, 1, wg, none, f.a), "192.0.2.1:6783", 0, "", "", "udp_relay_dropped_hop_limit", ""},
		{"payload not WireGuard", frame(self, a, 5, []byte("hello, this is not wireguard at all...."), none, f.a), "192.0.2.1:6783", 0, "", "", "udp_relay_dropped_malformed", ""},
		{"unknown type", append([]byte{0xF7, 2, 9, 5}, frame(self, a, 5, wg, none, f.a)[4:]...), "192.0.2.1:6783", 0, "", "", "udp_relay_dropped_malformed", ""},
		{"version 1", append([]byte{0xF7, 1, 0, 5}, frame(self, a, 5, wg, none, f.a)[4:]...), "192.0.2.1:6783", 0, "", "", "udp_junk_dropped", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.paths[f.a].learned.Store(nil)
			before := f.bind.Counters()[tt.counter]
			beforeBytes := f.bind.Counters()["udp_relay_delivered_bytes"]
			sends := f.inner.sends
			f.inner.keep = true
			bt := newBatch()
			bt.fill(tt.pkt, tt.from)
			f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
			if bt.sizes[0] != tt.size {
				t.Fatalf("size after = %d, want %d", bt.sizes[0], tt.size)
			}
			if tt.size > 0 {
				if !bytes.Equal(bt.packets[0][:bt.sizes[0]], wg) {
					t.Errorf("delivered payload differs")
				}
				if got := epAddr(bt.eps[0]); got != tt.ep {
					t.Errorf("endpoint = %s, want %s", got, tt.ep)
				}
			}
			switch {
			case tt.sentTo == "" && f.inner.sends != sends:
				t.Errorf("sent something to %s", epAddr(f.inner.lastEP))
			case tt.sentTo != "":
				h, _, _ := ParseRelayHeader(f.inner.last)
				to := f.a
				if tt.sentTo == "192.0.2.2:6783" {
					to = f.b
				}
				switch {
				case f.inner.sends != sends+1 || epAddr(f.inner.lastEP) != tt.sentTo:
					t.Errorf("forwarded to %s (%d sends), want %s", epAddr(f.inner.lastEP), f.inner.sends-sends, tt.sentTo)
				case h.HopLimit != 4 || !h.Forwarded:
					t.Errorf("forwarded hop limit %d, F bit %v; want 4, set", h.HopLimit, h.Forwarded)
				case !hopValidTo(f.inner.last, f.self, to):
					t.Errorf("forwarded hop not sealed for the next hop")
				}
			}
			if got := f.bind.Counters()[tt.counter]; got != before+1 {
				t.Errorf("%s = %d, want %d", tt.counter, got, before+1)
			}
			if got := f.bind.Counters()["udp_relay_delivered_bytes"] - beforeBytes; got != uint64(tt.size) {
				t.Errorf("udp_relay_delivered_bytes grew by %d, want %d", got, tt.size)
			}
			got := ""
			if l := f.paths[f.a].learned.Load(); l != nil {
				got = l.String()
			}
			if got != tt.learned {
				t.Errorf("a's endpoint learned %q, want %q", got, tt.learned)
			}
		})
	}
}

// TestRelayHopAuthentication is issue 12's acceptance 3 for data frames:
// frames from a non-member, replayed frames and frames with a valid-looking
// header but a wrong MAC are dropped and counted, and none moves an
// endpoint; the genuine frame, from anywhere, is taken and moves it.
func TestRelayHopAuthentication(t *testing.T) {
	f := newRelayFixture(t)
	self, a := PeerIDOf(f.self), PeerIDOf(f.a)
	wg := wgTransport(100)
	data := func() []byte {
		return append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: DefaultHopLimit, Dst: self, Src: a}), wg...)
	}
	genuine := hopFrom(data(), f.a)
	wrongMAC := bytes.Clone(genuine)
	wrongMAC[relayOffMAC] ^= 1
	otherCounter := bytes.Clone(genuine) // a counter the MAC does not cover
	otherCounter[relayOffMAC-1] ^= 1
	bSpeaksForA := hopFrom(data(), f.b) // b's own key, a's name
	var stranger [32]byte
	stranger[0] = 0x55
	nonMember := data()
	sealHop(nonMember, &stranger, testHopCtr.Add(1))
	forwardedByStranger := data()
	forwardedByStranger[relayOffHopLimit] |= relayForwarded
	sealHop(forwardedByStranger, &stranger, testHopCtr.Add(1))
	steps := []struct {
		name    string
		pkt     []byte
		from    string
		counter string
		learned string
	}{
		{"wrong MAC, from a's address", wrongMAC, "192.0.2.1:6783", "udp_relay_dropped_bad_mac", ""},
		{"counter changed under the MAC", otherCounter, "203.0.113.9:4000", "udp_relay_dropped_bad_mac", ""},
		{"b speaking for a", bSpeaksForA, "192.0.2.2:6783", "udp_relay_dropped_bad_mac", ""},
		{"non-member with a key of its own", nonMember, "203.0.113.9:4000", "udp_relay_dropped_bad_mac", ""},
		{"non-member claiming to forward", forwardedByStranger, "203.0.113.9:4000", "udp_relay_dropped_unknown_source", ""},
		{"genuine, from a NAT's port", genuine, "203.0.113.5:49601", "udp_relay_delivered", "203.0.113.5:49601"},
		{"the same frame replayed from elsewhere", genuine, "203.0.113.9:4000", "udp_relay_dropped_replayed", ""},
		{"replayed from a's own address", genuine, "192.0.2.1:6783", "udp_relay_dropped_replayed", ""},
	}
	for _, s := range steps {
		f.paths[f.a].learned.Store(nil)
		before := f.bind.Counters()
		bt := newBatch()
		bt.fill(s.pkt, s.from)
		f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
		after := f.bind.Counters()
		if after[s.counter] != before[s.counter]+1 {
			t.Errorf("%s: %s %d → %d, want +1", s.name, s.counter, before[s.counter], after[s.counter])
		}
		delivered := s.counter == "udp_relay_delivered"
		if (bt.sizes[0] != 0) != delivered {
			t.Errorf("%s: size after %d, delivered %v", s.name, bt.sizes[0], delivered)
		}
		got := ""
		if l := f.paths[f.a].learned.Load(); l != nil {
			got = l.String()
		}
		if got != s.learned {
			t.Errorf("%s: a's endpoint learned %q, want %q", s.name, got, s.learned)
		}
	}
	// Frames arriving out of order within the window are taken once each.
	k := hopKeyOf(testPairKey(f.a), a)
	base := testHopCtr.Add(1000)
	for _, d := range []uint64{900, 100, 500, 100, 901, 500} {
		fr := data()
		sealHop(fr, k, base-1000+d)
		before := f.bind.Counters()["udp_relay_delivered"]
		bt := newBatch()
		bt.fill(fr, "192.0.2.1:6783")
		f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
		_ = before
	}
	if c := f.bind.Counters(); c["udp_relay_dropped_replayed"] != 4 {
		t.Errorf("out of order: %d replays counted, want 4 (2 earlier, 2 repeats)", c["udp_relay_dropped_replayed"])
	}
}

// TestRelaySendWrapsAndRoutes: Send to a relay endpoint wraps the datagrams
// and sends them to the relay while the peer is relayed, straight to the
// peer when it is direct.
func TestRelaySendWrapsAndRoutes(t *testing.T) {
	f := newRelayFixture(t)
	f.inner.keep = true
	ep, _ := f.bind.ParseEndpoint("relay:" + PeerIDOf(f.c).String())
	wg := wgTransport(64)
	if err := f.bind.Send([][]byte{wg, wg}, ep); err != nil {
		t.Fatal(err)
	}
	if got := f.bind.Counters()["udp_relay_sent_bytes"]; got != uint64(2*len(wg)) {
		t.Errorf("udp_relay_sent_bytes = %d, want %d", got, 2*len(wg))
	}
	if epAddr(f.inner.lastEP) != "192.0.2.2:6783" || f.inner.frames != 2 {
		t.Fatalf("sent %d frames to %s, want 2 to the relay b", f.inner.frames, epAddr(f.inner.lastEP))
	}
	h, payload, err := ParseRelayHeader(f.inner.last)
	if err != nil || h.Dst != PeerIDOf(f.c) || h.Src != PeerIDOf(f.self) || h.HopLimit != DefaultHopLimit || !bytes.Equal(payload, wg) {
		t.Fatalf("frame %+v % x %v", h, payload, err)
	}
	f.paths[f.c].relayed.Store(false)
	f.bind.Send([][]byte{wg}, ep)
	if epAddr(f.inner.lastEP) != "192.0.2.3:6783" {
		t.Errorf("direct peer: sent to %s", epAddr(f.inner.lastEP))
	}
	ep2, _ := f.bind.ParseEndpoint("relay:0102030405060708")
	if err := f.bind.Send([][]byte{wg}, ep2); !errors.Is(err, errNoRelayRoute) {
		t.Errorf("unknown peer: err = %v", err)
	}
}

// gsoCheckBind is an inner Bind that checks, on every send, that each frame
// can be appended in place to the one before: what the std Bind's UDP GSO
// needs to send a batch as one segmented datagram rather than one message per
// frame.
type gsoCheckBind struct {
	fakeBind
	t     *testing.T
	sends int
}

func (g *gsoCheckBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	g.sends++
	for i := 1; i < len(bufs); i++ {
		prev := bufs[i-1]
		if cap(prev)-len(prev) < len(bufs[i]) || &prev[:len(prev)+1][len(prev)] != &bufs[i][0] {
			g.t.Errorf("frame %d of %d does not follow frame %d in its buffer", i, len(bufs), i-1)
			return nil
		}
	}
	return nil
}

// TestRelaySendLaidOutForGSO: a relayed batch is wrapped into one buffer,
// frame after frame, so that the std Bind can coalesce it with UDP GSO.
func TestRelaySendLaidOutForGSO(t *testing.T) {
	f := newRelayFixture(t)
	g := &gsoCheckBind{t: t}
	f.bind.inner = g
	ep, _ := f.bind.ParseEndpoint("relay:" + PeerIDOf(f.c).String())
	for _, n := range []int{1, 2, 44, conn.IdealBatchSize, 3} {
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = wgTransport(1452)
		}
		bufs[n-1] = wgTransport(100) // a short last one, as in a TCP burst
		if err := f.bind.Send(bufs, ep); err != nil {
			t.Fatal(err)
		}
	}
	if g.sends != 5 {
		t.Errorf("%d sends, want 5", g.sends)
	}
}

// TestRelayRoamingFollowsChoice: a direct WireGuard datagram from a relayed
// peer gets the relay endpoint, so wireguard-go's roaming keeps our choice.
func TestRelayRoamingFollowsChoice(t *testing.T) {
	f := newRelayFixture(t)
	bt := newBatch()
	bt.fill(wgTransport(64), "192.0.2.3:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if got := epAddr(bt.eps[0]); got != "relay:"+PeerIDOf(f.c).String() || bt.sizes[0] != 64 {
		t.Errorf("endpoint %s size %d", got, bt.sizes[0])
	}
	bt.fill(wgTransport(64), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if got := epAddr(bt.eps[0]); got != "192.0.2.1:6783" {
		t.Errorf("direct peer's endpoint became %s", got)
	}
}

func TestTokenBucket(t *testing.T) {
	var b tokenBucket
	const rate, burst = 1000.0, 3000.0 // bytes/s
	now := int64(1e9)
	for i := range 3 {
		if !b.allow(now, 1000, rate, burst) {
			t.Fatalf("frame %d of the burst refused", i)
		}
	}
	if b.allow(now, 1000, rate, burst) {
		t.Fatal("frame past the burst allowed")
	}
	now += int64(500 * time.Millisecond)
	if b.allow(now, 1000, rate, burst) {
		t.Fatal("allowed after half the refill time")
	}
	now += int64(500 * time.Millisecond)
	if !b.allow(now, 1000, rate, burst) {
		t.Fatal("refused after a full second")
	}
	now += int64(time.Hour)
	n := 0
	for b.allow(now, 1000, rate, burst) {
		n++
	}
	if n != 3 {
		t.Errorf("after a long idle time %d frames allowed, want the burst (3)", n)
	}
}

// TestRelayRateLimited: forwarding stops at the source's budget and counts.
func TestRelayRateLimited(t *testing.T) {
	f := newRelayFixture(t)
	f.bind.relayRate, f.bind.relayBurst = 1100, 1100 // three 336-byte frames
	pkt := append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: 5, Dst: PeerIDOf(f.c), Src: PeerIDOf(f.a)}), wgTransport(300)...)
	bt := newBatch()
	for range 5 {
		bt.fill(hopFrom(pkt, f.a), "192.0.2.1:6783")
		f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	}
	c := f.bind.Counters()
	if c["udp_relay_forwarded"] != 3 || c["udp_relay_dropped_rate_limited"] != 2 {
		t.Errorf("forwarded %d, rate limited %d; want 3 and 2", c["udp_relay_forwarded"], c["udp_relay_dropped_rate_limited"])
	}
	if want := uint64(3 * len(pkt)); c["udp_relay_forwarded_bytes"] != want {
		t.Errorf("forwarded %d bytes, want %d (three whole frames)", c["udp_relay_forwarded_bytes"], want)
	}
}

// TestRelayForwardsHandshakesFirst: of a batch a relay forwards, the
// handshake messages and path probes go out before the WireGuard data read
// with them, whatever their place in the batch: a relay behind on its
// queue would otherwise send a handshake only after the bulk ahead of it,
// late enough for WireGuard to give it up. The data keeps its order, each
// next hop's in one send.
func TestRelayForwardsHandshakesFirst(t *testing.T) {
	f := newRelayFixture(t)
	capt := &captureBind{}
	f.bind.inner = capt
	a, c := PeerIDOf(f.a), PeerIDOf(f.c)
	// From a (first hop) to c, whose next hop is b; and from c, relayed
	// by b, to a.
	aToC := func(typ uint8, payload []byte) []byte {
		fr := append(AppendRelayHeader(nil, RelayHeader{Type: typ, HopLimit: 5, Dst: c, Src: a}), payload...)
		return hopFrom(fr, f.a)
	}
	cToA := func(typ uint8, payload []byte) []byte {
		fr := append(AppendRelayHeader(nil, RelayHeader{Type: typ, HopLimit: 5, Forwarded: true, Dst: a, Src: c}), payload...)
		return hopFrom(fr, f.b)
	}
	fromA, fromB := "192.0.2.1:6783", "192.0.2.2:6783"
	data := func(n byte) []byte { p := wgTransport(1400); p[16] = n; return p }
	in := []struct {
		name, from string
		frame      []byte
	}{
		{"data 1 a→c", fromA, aToC(RelayTypeData, data(1))},
		{"data 2 c→a", fromB, cToA(RelayTypeData, data(2))},
		{"data 3 a→c", fromA, aToC(RelayTypeData, data(3))},
		{"initiation a→c", fromA, aToC(RelayTypeData, wgMsg(wgTypeInitiation, wgSizeInitiation, [4]byte{1}))},
		{"data 4 a→c", fromA, aToC(RelayTypeData, data(4))},
		{"response c→a", fromB, cToA(RelayTypeData, wgMsg(wgTypeResponse, wgSizeResponse, [4]byte{2}))},
		{"probe a→c", fromA, aToC(RelayTypeProbe, make([]byte, 64))},
		{"data 5 c→a", fromB, cToA(RelayTypeData, data(5))},
	}
	packets, sizes, eps := make([][]byte, len(in)), make([]int, len(in)), make([]conn.Endpoint, len(in))
	for i, x := range in {
		packets[i] = make([]byte, 2048)
		sizes[i] = copy(packets[i], x.frame)
		eps[i] = &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort(x.from)}
	}
	f.bind.sortBatch(packets, sizes, eps)
	// Name what was sent by its payload.
	name := func(fr []byte) string {
		h, payload, err := ParseRelayHeader(fr)
		if err != nil {
			return "junk"
		}
		for _, x := range in {
			_, p, _ := ParseRelayHeader(x.frame)
			if h.Type == RelayTypeData && bytes.Equal(p, payload) || h.Type != RelayTypeData && h.Type == x.frame[relayOffType] {
				return x.name
			}
		}
		return "unknown"
	}
	var got []string
	for _, fr := range capt.frames {
		got = append(got, name(fr.b)+" to "+fr.to)
	}
	want := []string{
		"initiation a→c to 192.0.2.2:6783", "response c→a to 192.0.2.1:6783", "probe a→c to 192.0.2.2:6783",
		"data 1 a→c to 192.0.2.2:6783", "data 2 c→a to 192.0.2.1:6783", "data 3 a→c to 192.0.2.2:6783",
		"data 4 a→c to 192.0.2.2:6783", "data 5 c→a to 192.0.2.1:6783",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("forwarded in the order\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if c := f.bind.Counters(); c["udp_relay_forwarded"] != uint64(len(in)) {
		t.Errorf("udp_relay_forwarded = %d, want %d", c["udp_relay_forwarded"], len(in))
	}
}

// TestRelayZeroAllocs: the send and receive paths of relaying do not
// allocate once the pool is warm.
func TestRelayZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	f := newRelayFixture(t)
	ep, _ := f.bind.ParseEndpoint("relay:" + PeerIDOf(f.c).String())
	wg := wgTransport(1400)
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = wg
	}
	f.bind.Send(bufs, ep) // warm the pool
	if a := testing.AllocsPerRun(200, func() { f.bind.Send(bufs, ep) }); a != 0 {
		t.Errorf("relayed Send allocates %v times per batch", a)
	}

	n := 64
	packets, sizes, eps := make([][]byte, n), make([]int, n), make([]conn.Endpoint, n)
	srcB := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.2:6783")}
	srcA := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.1:6783")}
	toUs := append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: 5, Forwarded: true, Dst: PeerIDOf(f.self), Src: PeerIDOf(f.c)}), wg...)
	toC := append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: 5, Dst: PeerIDOf(f.c), Src: PeerIDOf(f.a)}), wg...)
	for i := range packets {
		packets[i] = make([]byte, 2048)
	}
	kb, ka := hopKeyOf(testPairKey(f.b), PeerIDOf(f.b)), hopKeyOf(testPairKey(f.a), PeerIDOf(f.a))
	fill := func() {
		for i := range packets {
			if i%2 == 0 {
				sizes[i], eps[i] = copy(packets[i], toUs), srcB
				sealHop(packets[i], kb, testHopCtr.Add(1))
			} else {
				sizes[i], eps[i] = copy(packets[i], toC), srcA
				sealHop(packets[i], ka, testHopCtr.Add(1))
			}
		}
	}
	fill()
	f.bind.sortBatch(packets, sizes, eps)
	if a := testing.AllocsPerRun(200, func() { fill(); f.bind.sortBatch(packets, sizes, eps) }); a != 0 {
		t.Errorf("relay receive (deliver and forward) allocates %v times per batch", a)
	}
}

// testHopCtr numbers the hops tests seal: every frame a fresh counter.
var testHopCtr atomic.Uint64

// hopFrom seals frame's hop as sent by from (the source peer on a first
// hop, the relay when the F bit is set) to the fixture's self, with a fresh
// counter, and returns it.
func hopFrom(frame []byte, from key.Public) []byte {
	sealHop(frame, hopKeyOf(testPairKey(from), PeerIDOf(from)), testHopCtr.Add(1))
	return frame
}

// hopValidTo reports whether frame carries a hop we sealed for peer to.
func hopValidTo(frame []byte, self, to key.Public) bool {
	return hopMACValid(hopKeyOf(testPairKey(to), PeerIDOf(self)), frame)
}

// testPairKey stands in for the X25519-derived pair key (auth.go) in
// fixtures whose keys are not real: a fixed key per peer.
func testPairKey(k key.Public) *[32]byte {
	pk := blake2s.Sum256(k[:])
	return &pk
}

// TestProbes: a probe is answered, a reply records the RTT and the time of
// the last direct reply (the path owner's evidence), and sendProbes probes
// every peer direct and through its relay.
func TestProbes(t *testing.T) {
	f := newRelayFixture(t)
	f.inner.keep = true
	now := time.Unix(1000, 0)
	f.bind.now = func() time.Time { return now }
	self, a := PeerIDOf(f.self), PeerIDOf(f.a)

	// a probes us: we answer straight back with the IDs swapped.
	probe := appendProbe(nil, testPairKey(f.a), RelayHeader{Type: RelayTypeProbe, HopLimit: 1, Dst: self, Src: a}, 42, 7, probePathDirect, 0)
	bt := newBatch()
	bt.fill(hopFrom(probe, f.a), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	h, body, err := ParseRelayHeader(f.inner.last)
	if err != nil || h.Type != RelayTypeProbeReply || h.Dst != a || h.Src != self || epAddr(f.inner.lastEP) != "192.0.2.1:6783" || beUint64(body) != 42 {
		t.Fatalf("reply %+v to %s: %v", h, epAddr(f.inner.lastEP), err)
	}
	if m := probeMAC(testPairKey(f.a), f.inner.last); !bytes.Equal(m[:], f.inner.last[probeMACOff:]) {
		t.Errorf("reply not signed with the pair key")
	}
	if !hopValidTo(f.inner.last, f.self, f.a) {
		t.Errorf("reply's hop not sealed for a")
	}
	// A probe with a bad MAC is dropped.
	bad := bytes.Clone(probe)
	bad[len(bad)-1] ^= 1
	bt.fill(hopFrom(bad, f.a), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if f.bind.Counters()["udp_relay_dropped_bad_mac"] != 1 {
		t.Errorf("bad MAC not counted")
	}

	// c is relayed; a reply to our direct probe, 3 ms later, makes it direct.
	c := PeerIDOf(f.c)
	sent := now.UnixNano()
	now = now.Add(3 * time.Millisecond)
	reply := appendProbe(nil, testPairKey(f.c), RelayHeader{Type: RelayTypeProbeReply, HopLimit: 1, Dst: self, Src: c}, sent, 1, probePathDirect, 0)
	bt.fill(hopFrom(reply, f.c), "192.0.2.3:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	pc := &f.tbl.peers[f.tbl.lookup(c)]
	if got := time.Duration(pc.path.rtt.Load()); got != 3*time.Millisecond {
		t.Errorf("rtt %v, want 3ms", got)
	}
	if got := pc.path.lastReply.Load(); got != now.UnixNano() {
		t.Errorf("last direct reply at %d, want %d (the path owner's evidence)", got, now.UnixNano())
	}
	// sendProbes: a direct probe each, and a relayed one to c through b.
	f.inner.sends = 0
	f.bind.sendProbes()
	if f.inner.sends != 4 {
		t.Errorf("sendProbes sent %d probes, want 4", f.inner.sends)
	}
}

// newProbeFixture is a relay fixture that keeps what it sends, its Bind's
// clock reading *now; with our ID, peer c's, and c's row of the table.
func newProbeFixture(t *testing.T, now *time.Time) (f *relayFixture, self, c PeerID, pc *relayPeer) {
	f = newRelayFixture(t)
	f.inner.keep = true
	f.bind.now = func() time.Time { return *now }
	self, c = PeerIDOf(f.self), PeerIDOf(f.c)
	return f, self, c, &f.tbl.peers[f.tbl.lookup(c)]
}

// TestProbeOpeningFlag: in our opening turn (reach.Path.Opening) our probes,
// direct and relayed, carry the opening flag under the pair's MAC, from the
// round after the first, with the NAT-answers flag when the peer's NAT
// answered with ICMP port unreachable; a peer's flags are noted for the
// path owner, and the answer does not echo them.
func TestProbeOpeningFlag(t *testing.T) {
	now := time.Unix(1000, 0)
	f, self, c, pc := newProbeFixture(t, &now)

	// Ours: c's probes carry the word from the round after our first
	// direct probe of the turn (an ICMP answer from c's NAT is back by
	// then, and goes with it), others' never.
	round := func() (opening, answers []string) {
		sends := &captureBind{}
		f.bind.inner = sends
		f.bind.sendProbes()
		for _, fr := range sends.frames {
			h, body, err := ParseRelayHeader(fr.b)
			if err != nil || h.Type != RelayTypeProbe {
				t.Fatalf("sent %v, %v", h, err)
			}
			if body[17]&probeFlagOpening != 0 {
				opening = append(opening, fr.to)
			}
			if body[17]&probeFlagNATAnswers != 0 {
				answers = append(answers, fr.to)
			}
		}
		return opening, answers
	}
	if o, a := round(); len(o)+len(a) != 0 {
		t.Errorf("not opening: flagged %v %v", o, a)
	}
	// Nothing is said before STUN showed us our own NAT's address.
	pc.path.opening.Store(true)
	f.bind.noteUnreachable(netip.MustParseAddrPort("192.0.2.3:6783"))
	now = now.Add(probeInterval)
	round()
	now = now.Add(probeInterval)
	if o, a := round(); len(o)+len(a) != 0 {
		t.Errorf("own NAT's address unknown: flagged %v %v", o, a)
	}
	own := []netip.Addr{netip.MustParseAddr("203.0.113.7")}
	f.bind.ownMapped.Store(&own)
	pc.path.opening.Store(false)
	pc.path.natAnswers.Store(0)
	f.bind.ctr.natAnswers.Store(0)
	round()
	pc.path.opening.Store(true)
	if o, _ := round(); len(o) != 0 {
		t.Errorf("first round of the turn: opening word to %v already", o)
	}
	f.bind.noteUnreachable(netip.MustParseAddrPort("192.0.2.3:6783")) // c's NAT answered
	now = now.Add(probeInterval)
	if o, a := round(); len(o) != 2 || len(a) != 2 {
		t.Errorf("next round: opening word to %v, NAT-answers word to %v; want c direct and through b, both", o, a)
	}
	if got := f.bind.Counters()[CounterNATPortUnreachable]; got != 1 {
		t.Errorf("%s = %d, want 1", CounterNATPortUnreachable, got)
	}
	pc.path.opening.Store(false)
	if o, _ := round(); len(o) != 0 {
		t.Errorf("turn over: opening word to %v", o)
	}
	// A peer behind our own NAT (its mapping on our NAT's address) is
	// never told its NAT took our datagrams in.
	own = []netip.Addr{netip.MustParseAddr("192.0.2.3")}
	if _, a := round(); len(a) != 0 {
		t.Errorf("peer behind our own NAT told its NAT answered: %v", a)
	}
	f.bind.inner = f.inner

	// Theirs: c's flagged probe, relayed by b, is noted; the reply is not flagged.
	probe := appendProbe(nil, testPairKey(f.c), RelayHeader{Type: RelayTypeProbe, HopLimit: 5, Forwarded: true, Dst: self, Src: c}, 42, 9, probePathRelayed, probeFlagOpening|probeFlagNATAnswers)
	bt := newBatch()
	bt.fill(hopFrom(probe, f.b), "192.0.2.2:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if got := pc.path.peerOpening.Load(); got != now.UnixNano() {
		t.Errorf("peer's opening noted at %d, want %d", got, now.UnixNano())
	}
	if got := pc.path.takesIn.Load(); got != now.UnixNano() {
		t.Errorf("peer's word that our NAT took its datagram in noted at %d, want %d", got, now.UnixNano())
	}
	_, body, err := ParseRelayHeader(f.inner.last)
	if err != nil || body[17] != 0 {
		t.Errorf("reply flags %x (%v), want none", body[17], err)
	}
	// A forged flag (the MAC no longer matches) is dropped, noted nowhere.
	pc.path.peerOpening.Store(0)
	forged := appendProbe(nil, testPairKey(f.c), RelayHeader{Type: RelayTypeProbe, HopLimit: 5, Forwarded: true, Dst: self, Src: c}, 43, 10, probePathRelayed, 0)
	forged[RelayHeaderLen+17] |= probeFlagOpening
	bt.fill(hopFrom(forged, f.b), "192.0.2.2:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if got := pc.path.peerOpening.Load(); got != 0 {
		t.Errorf("forged opening flag noted")
	}
}

// TestProbeRelayingFlag: while our path to a peer is relayed, our probes
// to it, direct and relayed, say so (probeFlagRelaying) under the pair's
// MAC, and not once it is direct; a peer's word is noted for the path
// owner (reach.Path.PeerRelays: a kernel-datapath host keeps a peer that
// relays to it off its kernel device), the newest word each way.
func TestProbeRelayingFlag(t *testing.T) {
	now := time.Unix(1000, 0)
	f, self, c, pc := newProbeFixture(t, &now)

	flagged := func() (to []string, n int) {
		sends := &captureBind{}
		f.bind.inner = sends
		defer func() { f.bind.inner = f.inner }()
		f.bind.sendProbes()
		for _, fr := range sends.frames {
			h, body, err := ParseRelayHeader(fr.b)
			if err != nil || h.Type != RelayTypeProbe {
				t.Fatalf("sent %v, %v", h, err)
			}
			if h.Dst == c {
				n++
				if body[17]&probeFlagRelaying != 0 {
					to = append(to, fr.to)
				}
			}
		}
		return to, n
	}
	pc.path.relayed.Store(false)
	if to, n := flagged(); len(to) != 0 || n != 2 {
		t.Errorf("direct path: %d probes to c, flagged to %v; want 2, none flagged", n, to)
	}
	pc.path.relayed.Store(true)
	now = now.Add(relayProbeEvery) // the next relayed probe is due
	if to, n := flagged(); len(to) != 2 || n != 2 {
		t.Errorf("relayed path: %d probes to c, flagged to %v; want both flagged", n, to)
	}

	// Theirs: c's probes, relayed by b.
	probe := func(ctr uint64, flags byte) {
		fr := appendProbe(nil, testPairKey(f.c), RelayHeader{Type: RelayTypeProbe, HopLimit: 5, Forwarded: true, Dst: self, Src: c}, now.UnixNano(), ctr, probePathRelayed, flags)
		bt := newBatch()
		bt.fill(hopFrom(fr, f.b), "192.0.2.2:6783")
		f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	}
	probe(9, probeFlagRelaying)
	if got := pc.path.saysRelayed.Load(); got != now.UnixNano() || pc.path.saysDirect.Load() != 0 {
		t.Errorf("c relays: noted relayed at %d, direct at %d; want %d, 0", got, pc.path.saysDirect.Load(), now.UnixNano())
	}
	now = now.Add(probeInterval)
	probe(10, 0)
	if got := pc.path.saysDirect.Load(); got != now.UnixNano() {
		t.Errorf("c direct: noted at %d, want %d", got, now.UnixNano())
	}
	// A forged flag (the MAC no longer matches) is noted nowhere.
	now = now.Add(probeInterval)
	fr := appendProbe(nil, testPairKey(f.c), RelayHeader{Type: RelayTypeProbe, HopLimit: 5, Forwarded: true, Dst: self, Src: c}, now.UnixNano(), 11, probePathRelayed, 0)
	fr[RelayHeaderLen+17] |= probeFlagRelaying
	bt := newBatch()
	bt.fill(hopFrom(fr, f.b), "192.0.2.2:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if got := pc.path.saysRelayed.Load(); got == now.UnixNano() {
		t.Errorf("forged relaying flag noted")
	}
}

// TestRelayedProbeAnsweredThroughRelay: a probe that came through a relay
// is answered through that relay even while we hold the peer direct (the
// two sides' choices differ while a direct path fails): answered straight,
// over the failed path, neither side ever saw its relay answer.
func TestRelayedProbeAnsweredThroughRelay(t *testing.T) {
	now := time.Unix(1000, 0)
	f, self, c, pc := newProbeFixture(t, &now)
	pc.path.relayed.Store(false) // we send to c straight
	probe := appendProbe(nil, testPairKey(f.c), RelayHeader{Type: RelayTypeProbe, HopLimit: 5, Forwarded: true, Dst: self, Src: c}, now.UnixNano(), 9, probePathRelayed, 0)
	bt := newBatch()
	bt.fill(hopFrom(probe, f.b), "192.0.2.2:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if f.inner.sends != 1 || epAddr(f.inner.lastEP) != "192.0.2.2:6783" || !hopValidTo(f.inner.last, f.self, f.b) {
		t.Fatalf("relayed probe: %d sends, last to %s; want the answer to the relay b at 192.0.2.2:6783, sealed for it", f.inner.sends, epAddr(f.inner.lastEP))
	}
	h, _, err := ParseRelayHeader(f.inner.last)
	if err != nil || h.Type != RelayTypeProbeReply || h.Dst != c {
		t.Fatalf("answer %+v, %v", h, err)
	}
	// c's answer to our relayed probe, read 3 s after we sent it: the
	// path owner is told when the answered probe went (reach.RelayReply).
	sent := now.Add(-3 * time.Second)
	reply := appendProbe(nil, testPairKey(f.c), RelayHeader{Type: RelayTypeProbeReply, HopLimit: 5, Forwarded: true, Dst: self, Src: c}, sent.UnixNano(), 10, probePathRelayed, 0)
	bt.fill(hopFrom(reply, f.b), "192.0.2.2:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if got := pc.path.lastRelay.Load(); got != sent.UnixNano() {
		t.Errorf("relayed answer noted at %v, want the probe's send time %v", time.Unix(0, got), sent)
	}
}

// TestRelayedProbesPaced: a pair is probed straight every round but
// through its relay only every relayProbeEvery, except while its probes
// carry the NAT opening's words (the holder waits for them) or it holds.
func TestRelayedProbesPaced(t *testing.T) {
	now := time.Unix(1000, 0)
	f, _, c, pc := newProbeFixture(t, &now)
	rounds := func(n int) (direct, relayed int) {
		sends := &captureBind{}
		f.bind.inner = sends
		defer func() { f.bind.inner = f.inner }()
		for range n {
			f.bind.sendProbes()
			now = now.Add(probeInterval)
		}
		for _, fr := range sends.frames {
			h, body, err := ParseRelayHeader(fr.b)
			if err != nil || h.Type != RelayTypeProbe || h.Dst != c {
				continue
			}
			if body[16] == probePathDirect {
				direct++
			} else {
				relayed++
			}
		}
		return direct, relayed
	}
	if d, r := rounds(10); d != 10 || r != 2 {
		t.Errorf("10 rounds: %d direct probes, %d relayed; want 10 and 2", d, r)
	}
	pc.path.hold.Store(true) // holding off in a NAT opening: relayed probes only, every round
	if d, r := rounds(3); d != 0 || r != 3 {
		t.Errorf("holding: %d direct probes, %d relayed; want 0 and 3", d, r)
	}
}

// captureBind records every datagram sent and where.
type captureBind struct {
	fakeBind
	frames []struct {
		to string
		b  []byte
	}
}

func (c *captureBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	for _, b := range bufs {
		c.frames = append(c.frames, struct {
			to string
			b  []byte
		}{epAddr(ep), bytes.Clone(b)})
	}
	return nil
}

// TestProbeAuthentication: a probe is taken from any address when its MAC
// is the sender's pair key, moves the sender's endpoint there, and wakes
// the path loop; forged, replayed and other members' probes are dropped,
// counted, and move nothing.
func TestProbeAuthentication(t *testing.T) {
	self, a, b := PeerIDOf(relayTestKey(9)), relayTestKey(1), relayTestKey(2)
	// probe is from's probe under the pair key k, its hop sealed with the
	// hop key of k.
	probe := func(from key.Public, k *[32]byte, ctr uint64) []byte {
		p := appendProbe(nil, k, RelayHeader{Type: RelayTypeProbe, HopLimit: 1, Dst: self, Src: PeerIDOf(from)}, 1, ctr, probePathDirect, 0)
		sealHop(p, hopKeyOf(k, PeerIDOf(from)), testHopCtr.Add(1))
		return p
	}
	var other [32]byte
	other[0] = 1
	fromNAT := probe(a, testPairKey(a), 101)
	tests := []struct {
		name    string
		pkt     []byte
		from    string
		counter string
		learned string // a's endpoint after; "" unchanged
	}{
		{"a from its own address", probe(a, testPairKey(a), 100), "192.0.2.1:6783", "udp_relay_probes_answered", ""},
		{"a from a NAT's port", fromNAT, "203.0.113.5:49601", "udp_relay_endpoints_learned", "203.0.113.5:49601"},
		{"a replayed from elsewhere", fromNAT, "203.0.113.9:4000", "udp_relay_dropped_replayed", ""},
		{"a's body counter too old for the window", probe(a, testPairKey(a), 30), "192.0.2.1:6783", "udp_relay_dropped_replayed", ""},
		{"b's key claiming to be a", probe(a, testPairKey(b), 102), "203.0.113.9:4000", "udp_relay_dropped_bad_mac", ""},
		{"non-member with a made-up key", probe(a, &other, 103), "203.0.113.9:4000", "udp_relay_dropped_bad_mac", ""},
		{"unknown sender", probe(relayTestKey(77), &other, 104), "203.0.113.9:4000", "udp_relay_dropped_unknown_peer", ""},
	}
	f := newRelayFixture(t)
	f.inner.keep = true
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.bind.Counters()
			bt := newBatch()
			bt.fill(tt.pkt, tt.from)
			f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
			after := f.bind.Counters()
			if after[tt.counter] != before[tt.counter]+1 {
				t.Errorf("%s %d → %d, want +1", tt.counter, before[tt.counter], after[tt.counter])
			}
			learned := f.paths[a].learned.Load()
			switch {
			case tt.learned == "" && learned != nil && learned.String() != "203.0.113.5:49601":
				t.Errorf("endpoint moved to %v", learned)
			case tt.learned != "" && (learned == nil || learned.String() != tt.learned):
				t.Errorf("learned %v, want %s", learned, tt.learned)
			}
			if tt.learned != "" {
				select {
				case <-f.bind.learned:
				default:
					t.Errorf("path loop not woken")
				}
				if epAddr(f.inner.lastEP) != tt.from {
					t.Errorf("answered to %s, want %s (where the probe came from)", epAddr(f.inner.lastEP), tt.from)
				}
			}
		})
	}
}

// TestPairKey: both ends derive the same key; a third member, or another
// network, gets another.
func TestPairKey(t *testing.T) {
	var sec key.Secret
	sec[0] = 7
	mk := func() key.Private {
		k, err := key.NewPrivate()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	a, b, c := mk(), mk(), mk()
	ab, _ := pairKeyOf(a, b.Public(), sec)
	ba, _ := pairKeyOf(b, a.Public(), sec)
	cb, _ := pairKeyOf(c, b.Public(), sec)
	ab2, _ := pairKeyOf(a, b.Public(), key.Secret{})
	if ab != ba {
		t.Errorf("the two ends derive different keys")
	}
	if ab == cb || ab == ab2 {
		t.Errorf("another member or another network derives the same key")
	}
}

func TestReplayFilter(t *testing.T) {
	var f replayFilter
	steps := []struct {
		ctr  uint64
		want bool
	}{
		{0, false}, {5, true}, {5, false}, {3, true}, {3, false}, {100, true}, {37, true}, {36, false}, {99, true}, {1000, true}, {100, false},
	}
	for _, s := range steps {
		if got := f.accept(s.ctr); got != s.want {
			t.Errorf("accept(%d) = %v, want %v", s.ctr, got, s.want)
		}
	}
}

// BenchmarkRelayForward: a relay's receive path for a batch of 64 frames
// from a to c (forwarded to b), every 16th a handshake initiation.
func BenchmarkRelayForward(b *testing.B) {
	f := newRelayFixture(b)
	f.bind.relayRate, f.bind.relayBurst = 1e18, 1e18 // the fixture's clock stands still: no rate limit
	n := 64
	packets, sizes, eps := make([][]byte, n), make([]int, n), make([]conn.Endpoint, n)
	srcA := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.1:6783")}
	bulk := append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: 5, Dst: PeerIDOf(f.c), Src: PeerIDOf(f.a)}), wgTransport(1400)...)
	hs := append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: 5, Dst: PeerIDOf(f.c), Src: PeerIDOf(f.a)}), wgMsg(wgTypeInitiation, wgSizeInitiation, [4]byte{1})...)
	for i := range packets {
		packets[i] = make([]byte, 2048)
	}
	ka := hopKeyOf(testPairKey(f.a), PeerIDOf(f.a))
	fill := func() {
		for i := range packets {
			fr := bulk
			if i%16 == 15 {
				fr = hs
			}
			sizes[i], eps[i] = copy(packets[i], fr), srcA
			sealHop(packets[i], ka, testHopCtr.Add(1))
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		fill()
		f.bind.sortBatch(packets, sizes, eps)
	}
	if c := f.bind.Counters(); c["udp_relay_forwarded"] == 0 || c["udp_relay_dropped_rate_limited"] != 0 {
		b.Fatalf("forwarded %d, rate-limited %d: the benchmark forwards nothing", c["udp_relay_forwarded"], c["udp_relay_dropped_rate_limited"])
	}
}
