package sim

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// A connection of the in-memory network: two byte streams with unbounded
// buffers (writes never block, as with TCP's buffers when the application
// bounds what it queues, which the router does), reads that honour
// deadlines, and Close that ends both directions.

// stream is one direction of a connection.
type stream struct {
	mu     sync.Mutex
	buf    []byte
	closed bool
	wake   chan struct{} // cap 1: data arrived, closed, or a deadline changed
}

func newStream() *stream { return &stream{wake: make(chan struct{}, 1)} }

func (s *stream) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *stream) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.poke()
}

// memConn is one end of a connection.
type memConn struct {
	rd, wr        *stream
	local, remote netip.AddrPort
	tr            *Traffic // counts what this end sends

	mu       sync.Mutex
	deadline time.Time // for reads; writes never block
	done     chan struct{}
	once     sync.Once
	// closed, if set, is called once when this end closes (the network
	// forgets the connection when both ends have).
	closed func()
}

// newConnPair returns the two ends of a connection between a and b; what
// the a end sends is counted in ta, the b end's in tb.
func newConnPair(a, b netip.AddrPort, ta, tb *Traffic) (*memConn, *memConn) {
	ab, ba := newStream(), newStream()
	ca := &memConn{rd: ba, wr: ab, local: a, remote: b, tr: ta, done: make(chan struct{})}
	cb := &memConn{rd: ab, wr: ba, local: b, remote: a, tr: tb, done: make(chan struct{})}
	return ca, cb
}

func (c *memConn) Read(p []byte) (int, error) {
	for {
		select {
		case <-c.done:
			return 0, net.ErrClosed
		default:
		}
		s := c.rd
		s.mu.Lock()
		if len(s.buf) > 0 {
			n := copy(p, s.buf)
			s.buf = s.buf[n:]
			if len(s.buf) == 0 {
				s.buf = nil
			}
			s.mu.Unlock()
			return n, nil
		}
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return 0, io.EOF
		}
		c.mu.Lock()
		dl := c.deadline
		c.mu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			wait := time.Until(dl)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(wait)
			timeout = t.C
		}
		select {
		case <-s.wake:
		case <-c.done:
		case <-timeout:
		}
		// Stopped here, not deferred: a defer in the loop is kept on the
		// heap until Read returns (about 1 % of the simulation's CPU).
		if t != nil {
			t.Stop()
		}
	}
}

func (c *memConn) Write(p []byte) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	s := c.wr
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	s.buf = append(s.buf, p...)
	s.mu.Unlock()
	s.poke()
	if c.tr != nil {
		c.tr.Msgs.Add(1)
		c.tr.Bytes.Add(uint64(len(p)))
	}
	return len(p), nil
}

// Close ends both directions: the other end reads what was already sent,
// then EOF, and its writes fail.
//
// What this end had not read yet is dropped: nobody will read it, and a
// network that kept every connection ever made, with its unread bytes,
// held them for the whole run.
func (c *memConn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.rd.mu.Lock()
		c.rd.buf = nil
		c.rd.mu.Unlock()
		c.rd.close()
		c.wr.close()
		if c.closed != nil {
			c.closed()
		}
	})
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.local) }
func (c *memConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

func (c *memConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *memConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	old := c.deadline
	c.deadline = t
	c.mu.Unlock()
	// A blocked Read waits on a timer for the old deadline and checks
	// the deadline again when it fires, so a later one needs no wake-up;
	// the router moves its deadline on before every frame it reads, and
	// each move woke the reader for nothing (a loop and a timer each).
	if old.IsZero() || t.IsZero() || t.Before(old) {
		c.rd.poke()
	}
	return nil
}

func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
