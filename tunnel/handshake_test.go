package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weavewg/weavewg/types/key"
)

// Handshake messages as wireguard-go lays them out: type, then our sender
// index; a response then names the initiator's index, a transport message
// the receiver's.
func wgInitiation(sender uint32) []byte {
	m := make([]byte, wgSizeInitiation)
	m[0] = wgTypeInitiation
	binary.LittleEndian.PutUint32(m[4:], sender)
	for i := 8; i < len(m); i++ {
		m[i] = byte(i) ^ byte(sender)
	}
	return m
}

func wgResponse(sender, receiver uint32) []byte {
	m := make([]byte, wgSizeResponse)
	m[0] = wgTypeResponse
	binary.LittleEndian.PutUint32(m[4:], sender)
	binary.LittleEndian.PutUint32(m[8:], receiver)
	return m
}

func wgTransportTo(receiver uint32) []byte {
	m := wgTransport(wgMinSizeTransport)
	binary.LittleEndian.PutUint32(m[4:], receiver)
	return m
}

// hsClock drives a relay fixture's clock by hand.
type hsClock struct{ now time.Time }

func (c *hsClock) at(f *relayFixture, d time.Duration) {
	c.now = time.Unix(1000, 0).Add(d)
	f.bind.now = func() time.Time { return c.now }
}

// resentPayload is the WireGuard message in the inner Bind's last send,
// without its relay header if it had one.
func resentPayload(f *relayFixture) []byte {
	if _, p, err := ParseRelayHeader(f.inner.last); err == nil {
		return p
	}
	return f.inner.last
}

// TestHandshakeRetransmit: a handshake message of ours that goes
// unanswered is sent again, the same bytes, on the peer's current path,
// until answered; answers, crossing initiations and the retry limit end it.
// This is what makes a handshake lost on a cold start (a relay forwarding
// to a NAT port that drops it) cost half a second instead of wireguard-go's
// 5 s RekeyTimeout.
func TestHandshakeRetransmit(t *testing.T) {
	self := func(f *relayFixture) PeerID { return PeerIDOf(f.self) }
	type step struct {
		at      time.Duration
		recv    []byte // received before the retransmit check
		from    string // straight from this address, or …
		relayBy key.Public
		// What the retransmit check sends: "" nothing; else where.
		wantTo  string
		wantMsg []byte
	}
	init7, resp9 := wgInitiation(7), wgResponse(9, 55)
	tests := []struct {
		name  string
		send  []byte
		to    string // relay:c or an address
		steps []step
		left  bool // still pending at the end
	}{
		{
			name: "initiation to a relayed peer, answered through the relay",
			send: init7, to: "relay:c",
			steps: []step{
				{at: 100 * time.Millisecond},
				{at: 600 * time.Millisecond, wantTo: "192.0.2.2:6783", wantMsg: init7},
				{at: 700 * time.Millisecond, recv: wgResponse(3, 7), relayBy: relayTestKey(2)},
				{at: 1300 * time.Millisecond},
			},
		},
		{
			name: "initiation sent straight to a peer now relayed: the copy takes the relay",
			send: init7, to: "192.0.2.3:6783",
			steps: []step{
				{at: 600 * time.Millisecond, wantTo: "192.0.2.2:6783", wantMsg: init7},
				{at: 700 * time.Millisecond, recv: wgResponse(3, 8), from: "192.0.2.3:6783"}, // another index: not ours
				{at: 1200 * time.Millisecond, wantTo: "192.0.2.2:6783", wantMsg: init7},
				{at: 1300 * time.Millisecond, recv: wgResponse(3, 7), from: "192.0.2.3:6783"},
				{at: 1900 * time.Millisecond},
			},
		},
		{
			name: "response, answered by the initiator's first transport message",
			send: resp9, to: "192.0.2.1:6783",
			steps: []step{
				{at: 600 * time.Millisecond, wantTo: "192.0.2.1:6783", wantMsg: resp9},
				{at: 700 * time.Millisecond, recv: wgTransportTo(10), from: "192.0.2.1:6783"},
				{at: 1200 * time.Millisecond, wantTo: "192.0.2.1:6783", wantMsg: resp9},
				{at: 1300 * time.Millisecond, recv: wgTransportTo(9), from: "192.0.2.1:6783"},
				{at: 1900 * time.Millisecond},
			},
		},
		{
			name: "an initiation from another peer changes nothing",
			send: init7, to: "192.0.2.1:6783",
			steps: []step{
				{at: 300 * time.Millisecond, recv: wgInitiation(44), from: "192.0.2.2:6783"},
				{at: 600 * time.Millisecond, wantTo: "192.0.2.1:6783", wantMsg: init7},
			},
			left: true,
		},
		{
			name: "unanswered: sent again a bounded number of times, then left to wireguard-go",
			send: init7, to: "relay:c",
			steps: []step{
				{at: 500 * time.Millisecond, wantTo: "192.0.2.2:6783", wantMsg: init7},
				{at: 1000 * time.Millisecond, wantTo: "192.0.2.2:6783", wantMsg: init7},
				{at: 1500 * time.Millisecond, wantTo: "192.0.2.2:6783", wantMsg: init7},
				{at: 2000 * time.Millisecond, wantTo: "192.0.2.2:6783", wantMsg: init7},
				{at: 2500 * time.Millisecond},
				{at: 4000 * time.Millisecond},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRelayFixture(t)
			f.inner.keep = true
			var clk hsClock
			clk.at(f, 0)
			var ep conn.Endpoint = newRelayEndpoint(PeerIDOf(f.c))
			if tt.to != "relay:c" {
				var err error
				if ep, err = f.bind.ParseEndpoint(tt.to); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.bind.Send([][]byte{tt.send}, ep); err != nil {
				t.Fatal(err)
			}
			if !f.bind.handshakesPending() {
				t.Fatal("handshake message sent, none pending")
			}
			resent := uint64(0)
			for _, s := range tt.steps {
				clk.at(f, s.at)
				if s.recv != nil {
					bt := newBatch()
					switch {
					case s.from != "":
						bt.fill(s.recv, s.from)
					default:
						fr := append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: 5, Forwarded: true, Dst: self(f), Src: PeerIDOf(f.c)}), s.recv...)
						bt.fill(hopFrom(fr, s.relayBy), "192.0.2.2:6783")
					}
					f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
					if bt.sizes[0] != len(s.recv) {
						t.Fatalf("at %v: received message not handed to wireguard-go (size %d)", s.at, bt.sizes[0])
					}
				}
				sends := f.inner.sends
				f.bind.retransmitHandshakes()
				switch {
				case s.wantTo == "" && f.inner.sends != sends:
					t.Errorf("at %v: sent %d datagrams to %s, want none", s.at, f.inner.sends-sends, epAddr(f.inner.lastEP))
				case s.wantTo != "" && (f.inner.sends != sends+1 || epAddr(f.inner.lastEP) != s.wantTo):
					t.Errorf("at %v: %d sends, last to %s; want 1 to %s", s.at, f.inner.sends-sends, epAddr(f.inner.lastEP), s.wantTo)
				case s.wantTo != "" && !bytes.Equal(resentPayload(f), s.wantMsg):
					t.Errorf("at %v: sent something else than the message kept", s.at)
				case s.wantTo == "192.0.2.2:6783" && !hopValidTo(f.inner.last, f.self, f.b):
					t.Errorf("at %v: relayed copy not sealed for the relay", s.at)
				}
				if s.wantTo != "" {
					resent++
				}
			}
			if got := f.bind.Counters()[CounterHandshakeRetransmits]; got != resent {
				t.Errorf("%s = %d, want %d", CounterHandshakeRetransmits, got, resent)
			}
			if got := f.bind.handshakesPending(); got != tt.left {
				t.Errorf("pending at the end = %v, want %v", got, tt.left)
			}
		})
	}
}

// TestHandshakeRetransmitWaitsForSlowPath: on a path whose probes take
// long to come back, a copy waits twice the round trip (an answer that is
// only late is not lost; copies would queue behind it at a starved
// relay), and none goes once that is past wireguard-go's own retry.
func TestHandshakeRetransmitWaitsForSlowPath(t *testing.T) {
	for _, tt := range []struct {
		rtt  time.Duration
		want []time.Duration // when copies go, checked every 100 ms up to 5 s
	}{
		{0, []time.Duration{500 * time.Millisecond, 1000 * time.Millisecond, 1500 * time.Millisecond, 2000 * time.Millisecond}},
		{1200 * time.Millisecond, []time.Duration{2400 * time.Millisecond, 4800 * time.Millisecond}},
		{3 * time.Second, nil},
	} {
		f := newRelayFixture(t)
		f.inner.keep = true
		var clk hsClock
		clk.at(f, 0)
		f.tbl.peers[f.tbl.lookup(PeerIDOf(f.c))].path.relayRTT.Store(int64(tt.rtt))
		if err := f.bind.Send([][]byte{wgInitiation(7)}, newRelayEndpoint(PeerIDOf(f.c))); err != nil {
			t.Fatal(err)
		}
		var got []time.Duration
		for at := 100 * time.Millisecond; at < 5*time.Second; at += 100 * time.Millisecond {
			clk.at(f, at)
			sends := f.inner.sends
			f.bind.retransmitHandshakes()
			if f.inner.sends != sends {
				got = append(got, at)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("relayed path with probe round trip %v: copies at %v, want %v", tt.rtt, got, tt.want)
		}
	}
}

// TestHandshakeNewReplacesPending: wireguard-go holds one handshake per
// peer, so a new message to a peer replaces what was pending for it (a
// response after our initiation: we answered the peer's and ours is void),
// and other peers' messages stay; transport data is never kept.
func TestHandshakeNewReplacesPending(t *testing.T) {
	f := newRelayFixture(t)
	f.inner.keep = true
	var clk hsClock
	clk.at(f, 0)
	a, _ := f.bind.ParseEndpoint("192.0.2.1:6783")
	b, _ := f.bind.ParseEndpoint("192.0.2.2:6783")
	send := func(msg []byte, ep conn.Endpoint) {
		t.Helper()
		if err := f.bind.Send([][]byte{msg}, ep); err != nil {
			t.Fatal(err)
		}
	}
	send(wgTransport(100), a)
	if f.bind.handshakesPending() {
		t.Fatal("transport data kept as a handshake")
	}
	send(wgInitiation(1), a)
	send(wgInitiation(2), b)
	send(wgResponse(3, 99), a) // we answered a's initiation
	clk.at(f, 600*time.Millisecond)
	f.inner.sends = 0
	f.bind.retransmitHandshakes()
	// Two sends: the response to a and the initiation to b.
	if f.inner.sends != 2 {
		t.Fatalf("%d sent again, want 2", f.inner.sends)
	}
	f.bind.hs.mu.Lock()
	defer f.bind.hs.mu.Unlock()
	for _, p := range f.bind.hs.pending {
		switch {
		case p.peer == PeerIDOf(f.a) && (p.typ != wgTypeResponse || p.index != 3):
			t.Errorf("pending for a: type %d index %d, want the response 3", p.typ, p.index)
		case p.peer == PeerIDOf(f.b) && (p.typ != wgTypeInitiation || p.index != 2):
			t.Errorf("pending for b: type %d index %d, want the initiation 2", p.typ, p.index)
		}
	}
	if len(f.bind.hs.pending) != 2 {
		t.Errorf("%d pending, want 2", len(f.bind.hs.pending))
	}
}

// TestHandshakeCrossing: an initiation from a peer ours is pending for is
// decided by the relay IDs: the smaller side drops the peer's (counted) and
// sends its own again; the larger lets the peer's through and forgets its
// own. So exactly one of two crossing handshakes completes, instead of
// both being refused and waiting 5 s.
func TestHandshakeCrossing(t *testing.T) {
	a := PeerIDOf(relayTestKey(1))
	seen := map[bool]bool{}
	for n := byte(10); len(seen) < 2; n++ {
		self := relayTestKey(n)
		id := PeerIDOf(self)
		weFirst := bytes.Compare(id[:], a[:]) < 0
		if seen[weFirst] {
			continue
		}
		seen[weFirst] = true
		t.Run(fmt.Sprintf("our ID first %v", weFirst), func(t *testing.T) {
			f := newRelayFixtureAs(t, self)
			f.inner.keep = true
			var clk hsClock
			clk.at(f, 0)
			ep, _ := f.bind.ParseEndpoint("192.0.2.1:6783")
			init7 := wgInitiation(7)
			if err := f.bind.Send([][]byte{init7}, ep); err != nil {
				t.Fatal(err)
			}
			clk.at(f, 100*time.Millisecond)
			bt := newBatch()
			bt.fill(wgInitiation(44), "192.0.2.1:6783")
			f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
			if dropped := bt.sizes[0] == 0; dropped != weFirst {
				t.Errorf("peer's crossing initiation dropped = %v, want %v", dropped, weFirst)
			}
			if got, want := f.bind.Counters()[CounterHandshakeCrossedDropped], map[bool]uint64{true: 1}[weFirst]; got != want {
				t.Errorf("%s = %d, want %d", CounterHandshakeCrossedDropped, got, want)
			}
			clk.at(f, 600*time.Millisecond)
			sends := f.inner.sends
			f.bind.retransmitHandshakes()
			if resent := f.inner.sends - sends; resent != map[bool]int{true: 1}[weFirst] || (resent == 1 && !bytes.Equal(resentPayload(f), init7)) {
				t.Errorf("sent %d copies of ours, want one if ours goes on, none if forgotten", resent)
			}
			// Ours, unanswered for handshakeRetryAfter, no longer holds off
			// the peer's (sent again by its Bind): it goes through and ours
			// is forgotten.
			if weFirst {
				clk.at(f, 700*time.Millisecond)
				bt.fill(wgInitiation(44), "192.0.2.1:6783")
				f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
				if bt.sizes[0] == 0 {
					t.Errorf("the peer's initiation dropped while ours had gone unanswered for %v", 700*time.Millisecond)
				}
				if f.bind.handshakesPending() {
					t.Errorf("ours still pending after letting the peer's through")
				}
			}
			// An initiation from a peer we sent none to is never dropped.
			bt.fill(wgInitiation(45), "192.0.2.2:6783")
			f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
			if bt.sizes[0] == 0 {
				t.Errorf("an initiation from a peer we sent none to was dropped")
			}
		})
	}
}

// pendingCounts is the number of pending messages each peer's path state
// counts, and the unattached ones, checked against the list itself: a
// count left behind would send every packet of that peer to the lock.
func pendingCounts(t *testing.T, f *relayFixture) map[string]int32 {
	t.Helper()
	h := &f.bind.hs
	h.mu.Lock()
	defer h.mu.Unlock()
	got := map[string]int32{"unattached": h.unattached.Load()}
	sum := got["unattached"]
	for _, k := range []key.Public{f.a, f.b, f.c} {
		n := f.tbl.peers[f.tbl.lookup(PeerIDOf(k))].path.hsPending.Load()
		got[k.String()[:4]] = n
		sum += n
	}
	if int(sum) != len(h.pending) || h.n.Load() != int32(len(h.pending)) {
		t.Fatalf("counts %v (sum %d), n %d, but %d pending", got, sum, h.n.Load(), len(h.pending))
	}
	return got
}

// TestHandshakeOtherPeersNoLock: while a handshake message to peer a is
// pending, packets from every other peer (transport data, handshakes,
// straight or relayed) are passed to wireguard-go without taking the
// handshakes lock or allocating; a's own answer still clears it. With
// hundreds of peers some handshake is nearly always pending, and the old
// receive path locked and built a closure for every transport packet then.
func TestHandshakeOtherPeersNoLock(t *testing.T) {
	f := newRelayFixture(t)
	var clk hsClock
	clk.at(f, 0)
	a, _ := f.bind.ParseEndpoint("192.0.2.1:6783")
	if err := f.bind.Send([][]byte{wgInitiation(7)}, a); err != nil {
		t.Fatal(err)
	}
	if c := pendingCounts(t, f); c[f.a.String()[:4]] != 1 || c["unattached"] != 0 {
		t.Fatalf("after an initiation to a: counts %v, want a 1", c)
	}

	// A batch from b (straight) and c (relayed through b): data, an
	// initiation, a response and a transport message naming our index 7.
	n := 6
	packets, sizes, eps := make([][]byte, n), make([]int, n), make([]conn.Endpoint, n)
	for i := range packets {
		packets[i] = make([]byte, 2048)
	}
	srcB := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.2:6783")}
	fromC := func(msg []byte) []byte {
		return append(AppendRelayHeader(nil, RelayHeader{Type: RelayTypeData, HopLimit: 5, Forwarded: true, Dst: PeerIDOf(f.self), Src: PeerIDOf(f.c)}), msg...)
	}
	msgs := [][]byte{wgTransport(1400), wgInitiation(44), wgResponse(45, 7), wgTransportTo(7), fromC(wgTransport(1400)), fromC(wgResponse(46, 7))}
	want := []int{1400, wgSizeInitiation, wgSizeResponse, wgMinSizeTransport, 1400, wgSizeResponse}
	kb := hopKeyOf(testPairKey(f.b), PeerIDOf(f.b))
	fill := func() {
		for i, m := range msgs {
			sizes[i], eps[i] = copy(packets[i], m), srcB
			if i >= 4 {
				sealHop(packets[i], kb, testHopCtr.Add(1))
			}
		}
	}
	h := &f.bind.hs
	h.mu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fill()
		f.bind.sortBatch(packets, sizes, eps)
	}()
	select {
	case <-done:
		h.mu.Unlock()
	case <-time.After(10 * time.Second):
		h.mu.Unlock()
		<-done
		t.Fatal("packets from peers with nothing pending waited for the handshakes lock")
	}
	for i := range want {
		if sizes[i] != want[i] {
			t.Errorf("packet %d handed to wireguard-go with size %d, want %d", i, sizes[i], want[i])
		}
	}
	if !raceEnabled {
		if allocs := testing.AllocsPerRun(100, func() { fill(); f.bind.sortBatch(packets, sizes, eps) }); allocs != 0 {
			t.Errorf("receiving other peers' packets while a's handshake is pending allocates %v times per batch", allocs)
		}
	}
	if c := pendingCounts(t, f); c[f.a.String()[:4]] != 1 {
		t.Fatalf("a's initiation no longer pending after other peers' packets (counts %v)", c)
	}

	// a's response names our index: it answers ours, and a's count goes.
	bt := newBatch()
	bt.fill(wgResponse(3, 7), "192.0.2.1:6783")
	f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	if c := pendingCounts(t, f); c[f.a.String()[:4]] != 0 || f.bind.handshakesPending() {
		t.Errorf("a's response did not answer our initiation (counts %v)", c)
	}
}

// TestHandshakePendingCounts: every way a pending message goes (answered,
// replaced, crossed, pushed out by the bound, given up) takes it off the
// count it was in, and a message to an address the relay table does not
// know is counted unattached and answered from there.
func TestHandshakePendingCounts(t *testing.T) {
	f := newRelayFixture(t)
	var clk hsClock
	clk.at(f, 0)
	send := func(msg []byte, to string) {
		t.Helper()
		var ep conn.Endpoint = newRelayEndpoint(PeerIDOf(f.c))
		if to != "relay:c" {
			ep, _ = f.bind.ParseEndpoint(to)
		}
		if err := f.bind.Send([][]byte{msg}, ep); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(msg []byte, from string) {
		bt := newBatch()
		bt.fill(msg, from)
		f.bind.sortBatch(bt.packets, bt.sizes, bt.eps)
	}
	ka, kb, kc := f.a.String()[:4], f.b.String()[:4], f.c.String()[:4]
	check := func(step string, want map[string]int32) {
		t.Helper()
		got := pendingCounts(t, f)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: counts %v, want %v", step, got, want)
				return
			}
		}
	}
	send(wgInitiation(1), "192.0.2.1:6783")
	send(wgInitiation(2), "192.0.2.2:6783")
	send(wgInitiation(3), "relay:c")
	send(wgInitiation(4), "192.0.2.99:6783")
	check("one each", map[string]int32{ka: 1, kb: 1, kc: 1, "unattached": 1})
	send(wgResponse(5, 77), "192.0.2.1:6783") // replaces a's initiation
	check("replaced", map[string]int32{ka: 1, kb: 1, kc: 1, "unattached": 1})
	recv(wgResponse(9, 4), "192.0.2.99:6783") // from an address the table lacks
	check("unattached answered", map[string]int32{ka: 1, kb: 1, kc: 1, "unattached": 0})
	recv(wgTransportTo(5), "192.0.2.1:6783")
	check("a answered", map[string]int32{ka: 0, kb: 1, kc: 1})
	clk.at(f, 600*time.Millisecond) // ours to b no longer fresh: b's initiation goes through
	recv(wgInitiation(50), "192.0.2.2:6783")
	check("b crossed", map[string]int32{kb: 0, kc: 1})
	clk.at(f, handshakeGiveUp)
	f.bind.retransmitHandshakes()
	check("given up", map[string]int32{kc: 0, "unattached": 0})
	for i := range maxPendingHandshake + 3 {
		send(wgInitiation(uint32(100+i)), fmt.Sprintf("192.0.2.%d:6783", 100+i%100))
		send(wgInitiation(uint32(1000+i)), fmt.Sprintf("[2001:db8::%x]:6783", i))
	}
	pendingCounts(t, f) // the bound pushed the oldest out, each uncounted
	if got := f.bind.hs.unattached.Load(); got != maxPendingHandshake {
		t.Errorf("unattached = %d, want the bound %d", got, maxPendingHandshake)
	}
}
