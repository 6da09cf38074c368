package testbed

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/weavewg/weavewg/types/api"
)

// DatapathTo is what carries h's packets to peer nick as status says:
// "vxlan (trusted)", "userspace wireguard", "relayed via NICK", or "".
func DatapathTo(st *api.Status, nick string) string {
	for _, c := range ConnsTo(st, nick) {
		switch {
		case c.Datapath == "vxlan (trusted)":
			return c.Datapath
		case c.Via != "":
			return "relayed via " + c.Via
		case c.Datapath != "":
			return c.Datapath
		}
	}
	return ""
}

// WaitDatapath polls h's status until its datapath to nick is want, and
// returns how long that took.
func (h *Host) WaitDatapath(nick, want string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	err := Poll(h.bed.tb, timeout, fmt.Sprintf("%s: datapath to %s is %q", h, nick, want), func() error {
		st, err := h.StatusErr()
		if err != nil {
			return err
		}
		if got := DatapathTo(st, nick); got != want {
			return fmt.Errorf("datapath is %q", got)
		}
		return nil
	})
	return time.Since(start), err
}

// BlockUDPPort drops every UDP datagram to or from port on the underlay
// bridge (a failure injection: a firewall closing a port mid-flow). Its
// table is separate from Block's.
func (b *Bed) BlockUDPPort(port int) {
	b.tb.Helper()
	script := fmt.Sprintf(`table bridge wwgudp {
	chain fw {
		type filter hook forward priority 0; policy accept;
		udp dport %d counter drop
		udp sport %d counter drop
	}
}
`, port, port)
	if err := b.nft(script); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	b.logf("testbed: underlay drops UDP port %d", port)
}

// UnblockUDPPort undoes BlockUDPPort.
func (b *Bed) UnblockUDPPort() {
	b.tb.Helper()
	if err := b.nft("delete table bridge wwgudp\n"); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	b.logf("testbed: underlay UDP port block lifted")
}

// Stream is a paced TCP transfer from one container to another, running
// until Finish: chunk bytes every interval, so it spans whatever the test
// does meanwhile.
type Stream struct {
	conn   net.Conn
	l      net.Listener
	stop   chan struct{}
	sent   chan streamEnd
	recv   chan streamEnd
	closed bool
}

type streamEnd struct {
	sum [32]byte
	n   int64
	err error
}

// StartStream opens the connection and starts sending.
func StartStream(from, to *Container, port, chunk int, interval time.Duration) (*Stream, error) {
	l, err := Listen(to.Netns, net.JoinHostPort(to.Addr, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", to, err)
	}
	s := &Stream{l: l, stop: make(chan struct{}), sent: make(chan streamEnd, 1), recv: make(chan streamEnd, 1)}
	go func() {
		c, err := l.Accept()
		if err != nil {
			s.recv <- streamEnd{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		var e streamEnd
		copy(e.sum[:], h.Sum(nil))
		e.n, e.err = n, err
		s.recv <- e
	}()
	c, err := Dial(from.Netns, l.Addr().String(), 10*time.Second)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("dial %s from %s: %w", l.Addr(), from, err)
	}
	s.conn = c
	go func() {
		h := sha256.New()
		buf := make([]byte, chunk)
		var n int64
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				var e streamEnd
				copy(e.sum[:], h.Sum(nil))
				e.n = n
				s.sent <- e
				return
			case <-t.C:
			}
			rand.Read(buf)
			// A write blocks while the path is down; it must still
			// complete once traffic flows again.
			c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			if _, err := io.Copy(c, bytes.NewReader(buf)); err != nil {
				s.sent <- streamEnd{n: n, err: err}
				return
			}
			h.Write(buf)
			n += int64(chunk)
		}
	}()
	return s, nil
}

// Finish stops sending, closes the write side and checks that the receiver
// got every byte sent, by SHA-256. It returns the byte count.
func (s *Stream) Finish(timeout time.Duration) (int64, error) {
	defer s.l.Close()
	defer s.conn.Close()
	close(s.stop)
	sent := <-s.sent
	if sent.err != nil {
		return sent.n, fmt.Errorf("sending after %d bytes: %w", sent.n, sent.err)
	}
	s.conn.(*net.TCPConn).CloseWrite()
	select {
	case r := <-s.recv:
		if r.err != nil {
			return r.n, fmt.Errorf("receiving after %d bytes: %w", r.n, r.err)
		}
		if r.n != sent.n || r.sum != sent.sum {
			return r.n, fmt.Errorf("received %d bytes sha256 %x, sent %d bytes sha256 %x", r.n, r.sum, sent.n, sent.sum)
		}
		return r.n, nil
	case <-time.After(timeout):
		return sent.n, fmt.Errorf("receiver did not finish within %v", timeout)
	}
}
