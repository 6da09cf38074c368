package discovery

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// sinkConn is a net.Conn whose writes are kept (copied, as a kernel or
// the simulator's pipes do) and whose other methods are not used.
type sinkConn struct {
	net.Conn
	frames [][]byte
}

func (s *sinkConn) Write(p []byte) (int, error) {
	s.frames = append(s.frames, bytes.Clone(p))
	return len(p), nil
}

func (s *sinkConn) SetWriteDeadline(time.Time) error { return nil }

// A message that fits a pooled buffer is sealed without an allocation of
// its own (one per frame was the simulation's largest garbage), and each
// frame still decrypts to its message: the buffer a frame was sealed in
// is reused only after Write returned.
func TestWriteMsgReusesFrameBuffers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	priv, peer := newKey(t), newKey(t)
	type hs struct {
		res handshakeResult
		err error
	}
	done := make(chan hs, 1)
	go func() {
		res, err := handshakeResponder(b, peer, peer.Public(), []Epoch{{Secret: testSecret}})
		done <- hs{res, err}
	}()
	ini, err := handshakeInitiator(a, priv, priv.Public(), testSecret)
	if err != nil {
		t.Fatal(err)
	}
	resp := <-done
	if resp.err != nil {
		t.Fatal(resp.err)
	}
	sink := &sinkConn{frames: make([][]byte, 0, 256)}
	c := &conn{nc: sink, send: ini.send}
	var want [][]byte
	send := func(m []byte) {
		t.Helper()
		if err := c.writeMsg(m, time.Second); err != nil {
			t.Fatal(err)
		}
		want = append(want, m)
	}
	for _, m := range [][]byte{bytes.Repeat([]byte{1}, 40), bytes.Repeat([]byte{3}, frameBufLen-18), bytes.Repeat([]byte{4}, frameBufLen+100)} {
		send(m)
	}
	small := bytes.Repeat([]byte{2}, 1500)
	// Two allocations are not ours: the sink's copy, and the nonce
	// flynn/noise's ChaCha20-Poly1305 builds per message.
	if allocs := testing.AllocsPerRun(100, func() { send(small) }); allocs > 2 {
		t.Errorf("writeMsg allocated %.2f times per message of %d bytes besides the sink's copy and the cipher's nonce; want none (a pooled buffer)", allocs-2, len(small))
	}
	send(bytes.Repeat([]byte{5}, 7))
	// Every frame, in order, decrypts to its message: no buffer was
	// reused before its Write returned.
	recv := resp.res.recv
	if len(sink.frames) != len(want) {
		t.Fatalf("%d frames written, want %d", len(sink.frames), len(want))
	}
	for i, f := range sink.frames {
		if n := int(f[0])<<8 | int(f[1]); n != len(f)-2 {
			t.Fatalf("frame %d: length %d, body %d bytes", i, n, len(f)-2)
		}
		got, err := recv.Decrypt(nil, nil, f[2:])
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want[i]) {
			t.Fatalf("frame %d: decrypts to %d bytes, not the %d-byte message sent", i, len(got), len(want[i]))
		}
	}
}
