package discovery

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/weavewg/weavewg/types/key"
)

// gateConn is a net.Conn whose writes wait until the gate opens and are
// then kept: a peer that reads slowly, so the connection's queues fill.
type gateConn struct {
	net.Conn
	gate   chan struct{}
	frames chan []byte
}

func (g *gateConn) Write(p []byte) (int, error) {
	<-g.gate
	g.frames <- bytes.Clone(p)
	return len(p), nil
}

func (g *gateConn) SetWriteDeadline(time.Time) error { return nil }
func (g *gateConn) Close() error                     { return nil }

// noiseSession runs a control handshake between r and peer over a pipe:
// the sending half for r's writer, and the peer's result to read back
// what it writes.
func noiseSession(t *testing.T, r *Router, peer key.Private) (*noise.CipherState, handshakeResult) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan handshakeResult, 1)
	go func() {
		res, _ := handshakeResponder(b, peer, peer.Public(), []Epoch{{Secret: testSecret}})
		done <- res
	}()
	ini, err := handshakeInitiator(a, r.cfg.Private, r.self, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	resp := <-done
	if resp.recv == nil {
		t.Fatal("handshake: the responder failed")
	}
	return ini.send, resp
}

// A broadcast is one channel message per peer, queued at once on the
// sender's connections. Queued behind a slow connection, it must not push
// out the gossip queued there (a joiner's records, haves and wants: at
// 750 simulated peers a joiner's IPAM and DNS broadcasts dropped about
// 10,000 of them per batch of joins, and the newest joiner stayed
// unreachable for 30 s and more), and gossip goes out first.
func TestBroadcastDoesNotPushOutGossip(t *testing.T) {
	const peers = 2 * sendQueueLen // every one reached through one neighbour
	r, err := New(Config{Private: newKey(t), Secret: testSecret, Network: failNetwork{},
		Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.ctx, r.cancel = context.WithCancel(context.Background())
	ch, err := r.Channel("test", func(key.Public, []byte) {})
	if err != nil {
		t.Fatal(err)
	}

	peerKey := newKey(t)
	send, resp := noiseSession(t, r, peerKey)
	m := newMeshView(peers + 2)
	m.ks[0], m.ks[1] = r.self, peerKey.Public()
	sink := &gateConn{gate: make(chan struct{}), frames: make(chan []byte, 4*peers)}
	c := &conn{r: r, nc: sink, send: send, peer: m.ks[1], done: make(chan struct{})}
	r.mu.Lock()
	r.conns[c] = struct{}{}
	if err := r.addConnLocked(c); err != nil {
		r.mu.Unlock()
		t.Fatal(err)
	}
	r.publishNeighborsLocked()
	m.nb[1][0] = true
	for i := 2; i < len(m.ks); i++ {
		m.nb[1][i], m.nb[i][1] = true, true
	}
	var recs []Record
	var checks []sigCheck
	for i := 1; i < len(m.ks); i++ {
		recs = append(recs, *m.record(i))
		checks = append(checks, sigGood)
	}
	r.mergeRecordsLocked(nil, recs, checks)
	r.freshLocked()
	if !r.rt.reachable(m.ks[len(m.ks)-1]) {
		r.mu.Unlock()
		t.Fatal("setting up: the far peers are not reachable through the neighbour")
	}
	// The writer runs from here, and blocks on its first write.
	c.qmu.Lock()
	c.live = true
	start := c.startWriterLocked()
	c.qmu.Unlock()
	if start {
		go c.writeLoop()
	}
	// Gossip queued before the broadcast: a keepalive, the last thing the
	// maintenance loop would queue.
	c.lastWrite.Store(0)
	c.keepaliveDueLocked(time.Now())
	r.mu.Unlock()

	ch.Broadcast([]byte("hello"))

	close(sink.gate)
	var got [][]byte
	for {
		select {
		case f := <-sink.frames:
			msg, err := resp.recv.Decrypt(nil, nil, f[2:])
			if err != nil {
				t.Fatalf("frame %d: %v", len(got), err)
			}
			got = append(got, msg)
			continue
		case <-time.After(2 * time.Second):
		}
		break
	}
	keepalive, firstChannel, channel := -1, -1, 0
	for i, msg := range got {
		switch msg[0] {
		case msgKeepalive:
			keepalive = i
		case msgChannel:
			channel++
			if firstChannel < 0 {
				firstChannel = i
			}
		}
	}
	if keepalive < 0 {
		t.Fatalf("the keepalive queued before a broadcast to %d peers was dropped (%d messages written, %d of them channel messages; control_send_dropped %d)",
			peers+1, len(got), channel, r.ctr[CtrSendDropped].Load())
	}
	// The writer's first write (what blocked it) may be a channel
	// message; after that, gossip goes first.
	if firstChannel >= 0 && keepalive > firstChannel && firstChannel != 0 {
		t.Errorf("the keepalive went out at %d, after channel messages from %d", keepalive, firstChannel)
	}
	if channel != peers+1 {
		t.Errorf("%d channel messages written, want one per peer (%d); dropped: %d", channel, peers+1, r.ctr[CtrChannelSendDropped].Load())
	}
}

// The channel queue holds at most channelSendQueueBytes: ring parts of
// 64 KB queued behind a slow connection drop the oldest beyond that,
// counted, where 1,024 of them would hold 64 MB per connection.
func TestChannelQueueBoundedInBytes(t *testing.T) {
	r, c := digestRouter(t) // not live: nothing is written
	big := make([]byte, 64<<10)
	const n = 20
	for range n {
		c.queueChannel(big)
	}
	q := drain(c)
	if got, want := len(q), channelSendQueueBytes/len(big); got != want {
		t.Errorf("%d messages of %d bytes held, want %d (%d bytes)", got, len(big), want, channelSendQueueBytes)
	}
	if got, want := r.ctr[CtrChannelSendDropped].Load(), uint64(n-channelSendQueueBytes/len(big)); got != want {
		t.Errorf("%s = %d, want %d", CtrChannelSendDropped, got, want)
	}
	// Small messages: the count bounds the queue.
	for range channelSendQueueLen + 5 {
		c.queueChannel([]byte{msgChannel})
	}
	if got := len(drain(c)); got != channelSendQueueLen {
		t.Errorf("%d small messages held, want %d", got, channelSendQueueLen)
	}
}

// What a connection still had queued when it closed is counted
// (control_send_discarded), as a full queue's drops are: a lost
// message is repaired later, but not silently.
func TestClosedConnectionCountsWhatItDiscards(t *testing.T) {
	r, _ := digestRouter(t)
	send, _ := noiseSession(t, r, newKey(t))
	sink := &gateConn{gate: make(chan struct{}), frames: make(chan []byte, 16)}
	c := &conn{r: r, nc: sink, send: send, peer: seqKey(20), done: make(chan struct{})}
	r.wg.Add(1)
	c.qmu.Lock()
	c.live, c.writing = true, true
	c.qmu.Unlock()
	for range 3 {
		c.queue([]byte{msgKeepalive})
	}
	for range 2 {
		c.queueChannel([]byte{msgChannel})
	}
	finished := make(chan struct{})
	go func() { c.writeLoop(); close(finished) }()
	// The writer takes the first message and blocks writing it; the
	// connection closes.
	waitFor(t, 5*time.Second, "the writer to take a message", func() bool {
		c.qmu.Lock()
		defer c.qmu.Unlock()
		return len(c.q) == 2
	})
	c.close()
	close(sink.gate)
	<-finished
	if got := r.ctr[CtrSendDiscarded].Load(); got != 4 {
		t.Errorf("%s = %d, want 4 (the messages still queued when the connection closed)", CtrSendDiscarded, got)
	}
}
