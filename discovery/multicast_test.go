package discovery

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func TestMulticastRoundTrip(t *testing.T) {
	priv := newKey(t)
	m := ChannelMessage{Name: "dns", Broadcast: true, Src: priv.Public(), Payload: []byte("names")}
	m.Sign(priv)
	dsts := []key.Public{seqKey(1), seqKey(2), seqKey(3)}
	b, err := AppendMulticast(nil, &m, 9, dsts)
	if err != nil {
		t.Fatal(err)
	}
	got, gotDsts, err := ParseMulticast(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "dns" || got.Src != m.Src || got.Hops != 9 || !got.Broadcast || !bytes.Equal(got.Payload, m.Payload) || got.Sig != m.Sig {
		t.Fatalf("parsed %+v, want %+v with 9 hops", got, m)
	}
	if !slices.Equal(gotDsts, dsts) {
		t.Fatalf("destinations %v, want %v", gotDsts, dsts)
	}
	// The broadcast's signature holds for each destination: a relay's
	// type-4 copy to a peer that predates multicast checks.
	got.Dst = seqKey(2)
	if err := got.Verify(); err != nil {
		t.Fatalf("a destination's copy does not verify: %v", err)
	}
	for name, bad := range map[string][]byte{
		"empty":          nil,
		"other type":     append([]byte{msgChannel}, b[1:]...),
		"no name":        append([]byte{msgMulticast, 0}, b[2:]...),
		"long name":      append([]byte{msgMulticast, MaxChannelName + 1}, b[2:]...),
		"no destination": func() []byte { c := bytes.Clone(b); c[2+3+key.Len+1], c[2+3+key.Len+2] = 0, 0; return c }(),
		"cut":            b[:2+3+key.Len+3+2*key.Len],
		"no signature":   b[:len(b)-len(m.Payload)-1],
	} {
		if _, _, err := ParseMulticast(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	if _, err := AppendMulticast(nil, &m, 9, nil); err == nil {
		t.Error("a multicast message with no destination was encoded")
	}
	big := ChannelMessage{Name: "ipam", Src: m.Src, Payload: make([]byte, MaxChannelPayload)}
	if _, err := AppendMulticast(nil, &big, 9, dsts[:2]); err == nil {
		t.Error("a multicast message larger than a frame was encoded")
	}
	if f, err := parseFeatures(appendFeatures(nil, ourFeatures|1<<40)); err != nil || f&featMulticast == 0 {
		t.Errorf("features: %x, %v", f, err)
	}
	if _, err := parseFeatures(append(appendFeatures(nil, 1), 0)); !errors.Is(err, errTrailing) {
		t.Errorf("features with a trailing byte: %v", err)
	}
}

// fanRouter is a router that is not started, with a neighbour behind each
// connection it returns and far[i] peers reachable only through the i-th
// (each connected to that neighbour alone), and a "test" channel. A
// connection whose multicast[i] is set has sent a features message
// listing multicast.
func fanRouter(t *testing.T, far []int, multicast []bool) (*Router, *inbox, []*conn, [][]key.Public) {
	t.Helper()
	r, err := New(Config{Private: newKey(t), Secret: testSecret, Network: failNetwork{},
		Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	r.ctx, r.cancel = context.WithCancel(context.Background())
	box := &inbox{}
	if _, err := r.Channel("test", box.handle); err != nil {
		t.Fatal(err)
	}
	total := 1
	for _, f := range far {
		total += 1 + f
	}
	m := newMeshView(total)
	m.ks[0] = r.self
	var conns []*conn
	behind := make([][]key.Public, len(far))
	next := 1
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, f := range far {
		nb := next
		next++
		c := &conn{r: r, nc: &gateConn{}, peer: m.ks[nb], done: make(chan struct{})}
		r.conns[c] = struct{}{}
		if err := r.addConnLocked(c); err != nil {
			t.Fatal(err)
		}
		if multicast[i] {
			if err := r.handleFeaturesLocked(c, appendFeatures(nil, featMulticast)); err != nil {
				t.Fatal(err)
			}
		}
		m.nb[0][nb], m.nb[nb][0] = true, true
		behind[i] = append(behind[i], m.ks[nb])
		for range f {
			m.nb[nb][next], m.nb[next][nb] = true, true
			behind[i] = append(behind[i], m.ks[next])
			next++
		}
		conns = append(conns, c)
	}
	r.publishNeighborsLocked()
	var recs []Record
	var checks []sigCheck
	for i := 1; i < total; i++ {
		recs = append(recs, *m.record(i))
		checks = append(checks, sigGood)
	}
	r.mergeRecordsLocked(nil, recs, checks)
	r.freshLocked()
	for _, ks := range behind {
		for _, k := range ks {
			if !r.rt.reachable(k) {
				t.Fatal("setting up: a far peer is not reachable")
			}
		}
	}
	for _, c := range conns {
		drain(c) // the digests, summaries and features of the new connections
	}
	return r, box, conns, behind
}

// channelOut is what a connection's queue held of channel messages: the
// destinations of its multicast messages, and those of its type-4 ones.
type channelOut struct {
	multicasts [][]key.Public
	singles    []key.Public
	hops       []uint8
}

func channelQueued(t *testing.T, c *conn, src key.Public) channelOut {
	t.Helper()
	var out channelOut
	for _, b := range drain(c) {
		switch b[0] {
		case msgMulticast:
			m, dsts, err := ParseMulticast(b)
			if err != nil {
				t.Fatal(err)
			}
			m.Dst = dsts[0]
			if m.Src != src || m.Verify() != nil {
				t.Fatalf("a multicast message from %s that does not verify as src's", m.Src.Name())
			}
			out.multicasts = append(out.multicasts, dsts)
			out.hops = append(out.hops, m.Hops)
		case msgChannel:
			m, err := ParseChannelMessage(b)
			if err != nil {
				t.Fatal(err)
			}
			if m.Src != src || !m.Broadcast || m.Verify() != nil {
				t.Fatalf("a type-4 copy from %s (broadcast %v) that does not verify as src's", m.Src.Name(), m.Broadcast)
			}
			out.singles = append(out.singles, m.Dst)
			out.hops = append(out.hops, m.Hops)
		}
	}
	return out
}

func sortedKeys(ks []key.Public) []key.Public {
	ks = slices.Clone(ks)
	slices.SortFunc(ks, cmpKey)
	return ks
}

// A broadcast goes to a next hop that takes multicast as one message
// listing every peer routed through it, not one message per peer (each
// of which crossed every hop of its path: 3.3 frames per peer reached at
// 1,000 simulated peers); a next hop that predates multicast still gets
// one type-4 message per peer behind it.
func TestBroadcastOneMessagePerNextHop(t *testing.T) {
	r, _, conns, behind := fanRouter(t, []int{6, 3}, []bool{true, false})
	ch := r.channels["test"]
	sent0 := r.ctr[CtrChannelSent].Load()
	ch.Broadcast([]byte("all"))
	out := channelQueued(t, conns[0], r.self)
	if len(out.multicasts) != 1 || len(out.singles) != 0 {
		t.Fatalf("to a next hop that takes multicast: %d multicast and %d single messages, want one multicast", len(out.multicasts), len(out.singles))
	}
	if got, want := sortedKeys(out.multicasts[0]), sortedKeys(behind[0]); !slices.Equal(got, want) {
		t.Fatalf("the multicast lists %d peers, want the %d routed through its next hop", len(got), len(want))
	}
	legacy := channelQueued(t, conns[1], r.self)
	if len(legacy.multicasts) != 0 {
		t.Fatal("a next hop that sent no features message was sent a multicast message")
	}
	if got, want := sortedKeys(legacy.singles), sortedKeys(behind[1]); !slices.Equal(got, want) {
		t.Fatalf("to a next hop that predates multicast: type-4 copies for %d peers, want one for each of the %d behind it", len(got), len(want))
	}
	if got := r.ctr[CtrChannelSent].Load() - sent0; got != 1+4 {
		t.Errorf("gossip_channel_sent +%d, want 5 (the messages queued)", got)
	}
}

// Multicast sends to the peers it is given alone, as a broadcast sends to
// all: one message per next hop listing those of them routed through it,
// a type-4 copy each to a next hop that predates multicast, nothing to a
// next hop that has none of them, self skipped.
func TestMulticastToSomePeers(t *testing.T) {
	r, _, conns, behind := fanRouter(t, []int{6, 3, 2}, []bool{true, false, true})
	ch := r.channels["test"]
	to := []key.Public{r.self, behind[0][1], behind[0][4], behind[0][6], behind[1][2]}
	ch.Multicast(to, []byte("some"))
	out := channelQueued(t, conns[0], r.self)
	if len(out.multicasts) != 1 || len(out.singles) != 0 {
		t.Fatalf("to a next hop that takes multicast: %d multicast and %d single messages, want one multicast", len(out.multicasts), len(out.singles))
	}
	if got, want := sortedKeys(out.multicasts[0]), sortedKeys([]key.Public{behind[0][1], behind[0][4], behind[0][6]}); !slices.Equal(got, want) {
		t.Fatalf("the multicast lists %d peers, want the 3 given that are routed through its next hop", len(got))
	}
	legacy := channelQueued(t, conns[1], r.self)
	if len(legacy.multicasts) != 0 || len(legacy.singles) != 1 || legacy.singles[0] != behind[1][2] {
		t.Fatalf("to a next hop that predates multicast: %d multicasts, copies for %d peers, want one copy for the one peer given behind it", len(legacy.multicasts), len(legacy.singles))
	}
	if none := channelQueued(t, conns[2], r.self); len(none.multicasts)+len(none.singles) != 0 {
		t.Fatal("a next hop with none of the given peers behind it was sent something")
	}
}

// A relay delivers a multicast message that lists it, and sends the rest
// on: one multicast message per next hop that takes them, a type-4 copy
// per destination to one that does not, each a hop shorter; a
// destination it has no route to yet is parked, not dropped.
func TestMulticastRelay(t *testing.T) {
	r, box, conns, behind := fanRouter(t, []int{4, 2}, []bool{true, false})
	src := newKey(t)
	m := ChannelMessage{Name: "test", Broadcast: true, Src: src.Public(), Payload: []byte("relayed")}
	m.Sign(src)
	var lost key.Public
	lost[0] = 0xee
	dsts := append([]key.Public{r.self, lost}, behind[0][1:]...) // not the neighbour itself
	dsts = append(dsts, behind[1]...)
	b, err := AppendMulticast(nil, &m, 5, dsts)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.active[src.Public()] = &conn{r: r, nc: &gateConn{}, peer: src.Public(), done: make(chan struct{})} // where it came from: not a route
	err = r.handleMulticastLocked(b)
	r.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the relay's own copy delivered", func() bool { return box.has(src.Public(), []byte("relayed")) })
	out := channelQueued(t, conns[0], src.Public())
	if len(out.multicasts) != 1 || len(out.singles) != 0 {
		t.Fatalf("on to a next hop that takes multicast: %d multicast and %d single messages, want one multicast", len(out.multicasts), len(out.singles))
	}
	if got, want := sortedKeys(out.multicasts[0]), sortedKeys(behind[0][1:]); !slices.Equal(got, want) {
		t.Fatalf("the relayed multicast lists %d peers, want the %d it listed behind that hop", len(got), len(want))
	}
	legacy := channelQueued(t, conns[1], src.Public())
	if got, want := sortedKeys(legacy.singles), sortedKeys(behind[1]); len(legacy.multicasts) != 0 || !slices.Equal(got, want) {
		t.Fatalf("on to a next hop that predates multicast: %d multicasts and copies for %d peers, want a copy for each of %d", len(legacy.multicasts), len(got), len(want))
	}
	for _, h := range append(out.hops, legacy.hops...) {
		if h != 4 {
			t.Fatalf("relayed with %d hops left, want 4", h)
		}
	}
	r.mu.Lock()
	parked := len(r.parked)
	r.mu.Unlock()
	if parked != 1 {
		t.Errorf("%d messages parked, want the one for the destination with no route", parked)
	}
	// A message with one hop left is delivered here and goes no further.
	b, _ = AppendMulticast(nil, &m, 1, dsts)
	r.mu.Lock()
	exp0 := r.ctr[CtrChannelExpired].Load()
	r.handleMulticastLocked(b)
	r.mu.Unlock()
	if out := channelQueued(t, conns[0], src.Public()); len(out.multicasts)+len(out.singles) != 0 {
		t.Error("a multicast message with one hop left was forwarded")
	}
	if r.ctr[CtrChannelExpired].Load() == exp0 {
		t.Error("the destinations a spent message did not reach were not counted")
	}
}

// Over real connections: a broadcast along a line of four routers
// crosses each connection once (3 messages, where one per destination
// along its path was 1+2+3), and reaches every peer.
func TestBroadcastAlongALine(t *testing.T) {
	rs := make([]*testRouter, 4)
	boxes := make([]*inbox, 4)
	chans := make([]*Channel, 4)
	for i := range rs {
		rs[i] = newTestRouter(t, string(rune('a'+i)))
		boxes[i] = &inbox{}
		ch, err := rs[i].Channel("test", boxes[i].handle)
		if err != nil {
			t.Fatal(err)
		}
		chans[i] = ch
		// Nobody listens where the records say: the line stays a line.
		rs[i].mu.Lock()
		rs[i].selfRec.Port, rs[i].port = 1, 1
		rs[i].bumpSelfLocked()
		rs[i].mu.Unlock()
	}
	for i := 1; i < len(rs); i++ {
		if err := rs[i].Connect(rs[i-1].addr()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the line routes end to end, and every connection knows multicast", func() bool {
		if hop, _ := rs[3].NextHop(rs[0].Self()); hop != rs[2].Self() {
			return false
		}
		if hop, _ := rs[0].NextHop(rs[3].Self()); hop != rs[1].Self() {
			return false
		}
		for _, r := range rs {
			r.mu.Lock()
			n := 0
			for _, c := range r.active {
				if c.speaksMulticast {
					n++
				}
			}
			r.mu.Unlock()
			if n != len(r.active) {
				return false
			}
		}
		return true
	})
	var sent0 uint64
	for _, r := range rs {
		sent0 += r.Counters()[CtrChannelSent]
	}
	chans[3].Broadcast([]byte("along"))
	waitFor(t, 5*time.Second, "every other router receives the broadcast", func() bool {
		for i := range 3 {
			if !boxes[i].has(rs[3].Self(), []byte("along")) {
				return false
			}
		}
		return true
	})
	var sent uint64
	for _, r := range rs {
		sent += r.Counters()[CtrChannelSent]
	}
	if sent-sent0 != 3 {
		t.Errorf("the broadcast took %d channel messages along a line of 4, want 3 (one per connection)", sent-sent0)
	}
	if boxes[3].len() != 0 {
		t.Error("the broadcast came back to its sender")
	}
}

// Any bytes parse without a panic, and what parses encodes back to the
// same bytes.
func FuzzParseMulticast(f *testing.F) {
	m := ChannelMessage{Name: "dns", Broadcast: true, Src: seqKey(1), Payload: []byte("x")}
	seed, _ := AppendMulticast(nil, &m, 3, []key.Public{seqKey(2), seqKey(3)})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		got, dsts, err := ParseMulticast(b)
		if err != nil {
			return
		}
		again, err := AppendMulticast(nil, &got, got.Hops, dsts)
		if err != nil {
			t.Fatalf("parsed but does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("round trip changed the message:\n%x\n%x", b, again)
		}
	})
}

// A relay with a route to each destination sends a multicast on without
// recomputing routes that records changed meanwhile: the recomputation
// waits for its timer, which gathers a flood's records, as a unicast's
// forwarding does (every relayed broadcast forced one).
func TestMulticastRelayKeepsRecomputationGathered(t *testing.T) {
	r, _, conns, behind := fanRouter(t, []int{3}, []bool{true})
	src := newKey(t)
	m := ChannelMessage{Name: "test", Broadcast: true, Src: src.Public(), Payload: []byte("x")}
	m.Sign(src)
	b, err := AppendMulticast(nil, &m, 5, behind[0])
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recomputePending = true // a record just changed an edge elsewhere
	computed := r.ctr[CtrRoutesComputed].Load()
	if err := r.handleMulticastLocked(b); err != nil {
		t.Fatal(err)
	}
	if !r.recomputePending || r.ctr[CtrRoutesComputed].Load() != computed {
		t.Error("relaying a multicast whose destinations all had routes recomputed the routes")
	}
	if out := channelQueued(t, conns[0], src.Public()); len(out.multicasts) != 1 {
		t.Fatalf("%d multicasts relayed, want 1", len(out.multicasts))
	}
	// A destination with no route yet: the routes are brought up to
	// date first (it may be one the pending records bring).
	var lost key.Public
	lost[0] = 0xee
	b, _ = AppendMulticast(nil, &m, 5, []key.Public{lost})
	r.handleMulticastLocked(b)
	if r.recomputePending {
		t.Error("a destination with no route did not bring the pending recomputation forward")
	}
}
