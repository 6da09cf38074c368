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
)

// Listen opens a TCP listener inside namespace ns on addr ("10.32.1.1:5000").
func Listen(ns, addr string) (net.Listener, error) {
	var l net.Listener
	err := InNetns(ns, func() (err error) {
		l, err = net.Listen("tcp4", addr)
		return err
	})
	return l, err
}

// Dial opens a TCP connection from inside namespace ns.
func Dial(ns, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := InNetns(ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

// ServeReplies answers every TCP connection to addr inside namespace ns
// with reply(conn) and closes it, until the listener it returns is closed.
func ServeReplies(ns, addr string, reply func(net.Conn) string) (net.Listener, error) {
	l, err := Listen(ns, addr)
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, reply(c))
			c.Close()
		}
	}()
	return l, nil
}

// ReadReply connects to addr from inside namespace ns and returns what the
// server sends before it closes; timeout bounds the connect and the read.
func ReadReply(ns, addr string, timeout time.Duration) (string, error) {
	c, err := Dial(ns, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// DialUDP opens a connected UDP socket from inside namespace ns.
func DialUDP(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetns(ns, func() (err error) {
		c, err = net.Dial("udp4", addr)
		return err
	})
	return c, err
}

// TransferResult describes one Transfer.
type TransferResult struct {
	Bytes    int
	Took     time.Duration
	SHA256   [32]byte
	Received [32]byte
}

// Mbps is the transfer's goodput.
func (r TransferResult) Mbps() float64 {
	return float64(r.Bytes) * 8 / r.Took.Seconds() / 1e6
}

// Transfer sends size random bytes over TCP from container from to container
// to (listening on port) and checks they arrive byte-identical by SHA-256.
func Transfer(from, to *Container, port, size int, timeout time.Duration) (TransferResult, error) {
	var res TransferResult
	data := make([]byte, size)
	rand.Read(data)
	res.Bytes = size
	res.SHA256 = sha256.Sum256(data)

	l, err := Listen(to.Netns, net.JoinHostPort(to.Addr, strconv.Itoa(port)))
	if err != nil {
		return res, fmt.Errorf("listen in %s: %w", to, err)
	}
	defer l.Close()
	type recv struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan recv, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- recv{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r recv
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		got <- r
	}()
	start := time.Now()
	c, err := Dial(from.Netns, l.Addr().String(), 10*time.Second)
	if err != nil {
		return res, fmt.Errorf("dial %s from %s: %w", l.Addr(), from, err)
	}
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.Copy(c, bytes.NewReader(data)); err != nil {
		c.Close()
		return res, fmt.Errorf("send %s → %s: %w", from, to, err)
	}
	c.(*net.TCPConn).CloseWrite()
	var r recv
	select {
	case r = <-got:
	case <-time.After(timeout):
		c.Close()
		return res, fmt.Errorf("receive %s → %s: timed out", from, to)
	}
	c.Close()
	res.Took = time.Since(start)
	res.Received = r.sum
	if r.err != nil {
		return res, fmt.Errorf("receive %s → %s after %d bytes: %w", from, to, r.n, r.err)
	}
	if r.n != int64(size) || r.sum != res.SHA256 {
		return res, fmt.Errorf("%s → %s: received %d bytes sha256 %x, sent %d bytes sha256 %x", from, to, r.n, r.sum, size, res.SHA256)
	}
	return res, nil
}
