package discovery

import (
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// rawDial opens a plain TCP connection to r.
func rawDial(t *testing.T, r *testRouter) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// waitClosed waits until the router closes nc.
func waitClosed(t *testing.T, nc net.Conn) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, nc); err != nil && !isClosedByPeer(err) {
		t.Fatalf("connection not closed by the router: %v", err)
	}
}

// rawPeer completes a handshake and hello with r by hand, as a peer with key
// priv, and returns the connection for sending arbitrary frames.
func rawPeer(t *testing.T, r *testRouter, priv key.Private) *conn {
	t.Helper()
	nc := rawDial(t, r)
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	res, err := handshakeInitiator(nc, priv, priv.Public(), testSecret)
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{nc: nc, send: res.send, recv: res.recv, peer: res.peer}
	if err := c.writeMsg(AppendHello(nil, &Hello{Port: 1, Nickname: "raw"}), 0); err != nil {
		t.Fatal(err)
	}
	m, err := c.readMsg(make([]byte, readBufLen))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseHello(m); err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Time{})
	return c
}

func frame(n int, body []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(n))
	return append(b, body...)
}

func TestListenerSurvivesGarbage(t *testing.T) {
	r := newTestRouter(t, "r", withTuning(func(tu *tunables) { tu.handshake = 300 * time.Millisecond }))

	random := make([]byte, 4096)
	rand.Read(random)
	random[0] = 0xff // a length above any handshake message
	msg1Junk := make([]byte, msg1Min)
	rand.Read(msg1Junk)

	tests := []struct {
		name    string
		send    []byte
		hangUp  bool // close our side after sending
		counter string
	}{
		{"random bytes", random, false, CtrFrameOversized},
		{"oversized handshake frame", frame(65535, random[:100]), false, CtrFrameOversized},
		{"short first message", frame(10, random[:10]), false, CtrHandshakeFailed},
		{"truncated then hang up", frame(48, random[:20]), true, CtrHandshakeFailed},
		{"truncated then silence", frame(48, random[:20]), false, CtrHandshakeTimeout},
		{"nothing at all", nil, false, CtrHandshakeTimeout},
		{"message 1 without the secret", frame(len(msg1Junk), msg1Junk), false, CtrHandshakeBadSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.Counters()[tt.counter]
			nc := rawDial(t, r)
			if len(tt.send) > 0 {
				nc.Write(tt.send)
			}
			if tt.hangUp {
				nc.(*net.TCPConn).CloseWrite()
			}
			waitClosed(t, nc)
			waitFor(t, 2*time.Second, tt.counter, func() bool { return r.Counters()[tt.counter] > before })
		})
	}

	// Garbage after a good handshake.
	t.Run("frame that does not decrypt", func(t *testing.T) {
		c := rawPeer(t, r, newKey(t))
		c.nc.Write(frame(40, random[:40]))
		waitClosed(t, c.nc)
		waitFor(t, 2*time.Second, "decrypt failure counted", func() bool { return r.Counters()[CtrFrameDecryptFailed] > 0 })
	})
	t.Run("unknown type is ignored, malformed closes", func(t *testing.T) {
		c := rawPeer(t, r, newKey(t))
		if err := c.writeMsg([]byte{200, 1, 2, 3}, time.Second); err != nil {
			t.Fatal(err)
		}
		if err := c.writeMsg([]byte{msgKeepalive}, time.Second); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 2*time.Second, "unknown type counted", func() bool { return r.Counters()[CtrMessageUnknownType] > 0 })
		before := r.Counters()[CtrMessageMalformed]
		if err := c.writeMsg([]byte{msgRecords, 0, 1, 7}, time.Second); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, c.nc)
		waitFor(t, 2*time.Second, "malformed counted", func() bool { return r.Counters()[CtrMessageMalformed] > before })
	})
	t.Run("empty message", func(t *testing.T) {
		c := rawPeer(t, r, newKey(t))
		before := r.Counters()[CtrMessageMalformed]
		c.writeMsg(nil, time.Second)
		waitClosed(t, c.nc)
		waitFor(t, 2*time.Second, "malformed counted", func() bool { return r.Counters()[CtrMessageMalformed] > before })
	})

	// The router still works.
	b := newTestRouter(t, "b")
	if err := b.Connect(r.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a real peer still connects", func() bool {
		p, ok := r.peer(b.Self())
		return ok && p.Direct && p.Reachable
	})
}

func TestHandshakeRateLimited(t *testing.T) {
	r := newTestRouter(t, "r")
	burst := int(r.tun.hsBurst)
	for range burst + 5 {
		nc := rawDial(t, r)
		nc.Close()
	}
	waitFor(t, 2*time.Second, "drops counted", func() bool { return r.Counters()[CtrHandshakeRateLimit] >= 1 })
}

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(2, 3)
	ip := netipMust("192.0.2.1")
	other := netipMust("192.0.2.2")
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if !l.allow(ip, t0) {
			t.Fatalf("token %d refused", i)
		}
	}
	if l.allow(ip, t0) {
		t.Fatal("burst exceeded")
	}
	if !l.allow(other, t0) {
		t.Fatal("another address was limited")
	}
	if l.allow(ip, t0.Add(400*time.Millisecond)) {
		t.Fatal("refilled too fast")
	}
	if !l.allow(ip, t0.Add(600*time.Millisecond)) {
		t.Fatal("did not refill")
	}
	l.max = 2
	l.allow(netipMust("192.0.2.3"), t0.Add(time.Hour)) // prunes full buckets
	if len(l.buckets) > 2 {
		t.Errorf("%d buckets kept", len(l.buckets))
	}
}

func rawDialAddr(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}
