package nat

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// packetConn is the net.PacketConn the ICE agents' UDP mux runs on. It owns
// no socket: the tunnel's Bind hands it the STUN datagrams it sorted out
// (deliver, after the Manager's checks) and it sends through the tunnel's
// shared socket (send). So ICE checks leave from the very port and NAT
// mapping WireGuard uses.
//
// It also remembers the transaction ID and destination of every STUN
// request it sends, so that the Manager can drop answers to questions
// never asked, or answered from elsewhere.
type packetConn struct {
	// Constant.
	send  func(pkt []byte, dst netip.AddrPort) error
	local *net.UDPAddr
	now   func() time.Time
	ctr   *counters

	in     chan datagram // bounded; when full the oldest is dropped
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex // guards what follows
	deadline time.Time  // read deadline; zero: none
	dlChange chan struct{}
	txns     map[[12]byte]txn
	txOrder  [][12]byte // insertion order, for eviction
}

type datagram struct {
	b   []byte
	src netip.AddrPort
}

// txn is a STUN request we sent.
type txn struct {
	dst      netip.AddrPort
	username string // "" for a plain Binding request
	at       time.Time
}

const (
	connQueueLen = 256
	maxTxns      = 4096
	txnTTL       = 40 * time.Second // longer than any STUN retransmission schedule
)

var errDeadline = deadlineError{}

type deadlineError struct{}

func (deadlineError) Error() string   { return "nat: i/o timeout" }
func (deadlineError) Timeout() bool   { return true }
func (deadlineError) Temporary() bool { return true }
func (deadlineError) Unwrap() error   { return os.ErrDeadlineExceeded }

func newPacketConn(send func([]byte, netip.AddrPort) error, port uint16, now func() time.Time, ctr *counters) *packetConn {
	return &packetConn{
		send:     send,
		local:    &net.UDPAddr{IP: net.IPv4zero, Port: int(port)},
		now:      now,
		ctr:      ctr,
		in:       make(chan datagram, connQueueLen),
		closed:   make(chan struct{}),
		dlChange: make(chan struct{}),
		txns:     make(map[[12]byte]txn),
	}
}

// deliver queues a copy of pkt from src for ReadFrom. It never blocks.
func (c *packetConn) deliver(pkt []byte, src netip.AddrPort) {
	d := datagram{b: append([]byte(nil), pkt...), src: src}
	for {
		select {
		case c.in <- d:
			c.ctr.inc(cSTUNToICE)
			return
		default:
		}
		select {
		case <-c.in:
			c.ctr.inc(cSTUNQueueDropped)
		default:
		}
	}
}

// ReadFrom returns the next delivered datagram.
func (c *packetConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		select {
		case <-c.closed:
			return 0, nil, net.ErrClosed
		default:
		}
		c.mu.Lock()
		dl, change := c.deadline, c.dlChange
		c.mu.Unlock()
		var timer <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl) // deadlines are wall-clock times by net.Conn's contract
			if d <= 0 {
				return 0, nil, errDeadline
			}
			t = time.NewTimer(d)
			timer = t.C
		}
		var (
			dg  datagram
			err error
			got bool
		)
		select {
		case dg = <-c.in:
			got = true
		case <-c.closed:
			err = net.ErrClosed
		case <-timer:
			err = errDeadline
		case <-change:
		}
		if t != nil {
			t.Stop()
		}
		if got {
			n := copy(p, dg.b)
			return n, net.UDPAddrFromAddrPort(dg.src), nil
		}
		if err != nil {
			return 0, nil, err
		}
	}
}

// WriteTo sends p to addr through the shared socket.
func (c *packetConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("nat: not a UDP address")
	}
	dst := ua.AddrPort()
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if m, err := parseSTUN(p); err == nil && m.class() == classRequest {
		c.remember(m.txID, txn{dst: dst, username: string(m.username), at: c.now()})
	}
	if err := c.send(p, dst); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *packetConn) remember(id [12]byte, t txn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.txns[id]; !ok {
		c.txOrder = append(c.txOrder, id)
	}
	c.txns[id] = t
	// Evict expired ones from the front, and the oldest while too many.
	for len(c.txOrder) > 0 {
		old, ok := c.txns[c.txOrder[0]]
		if ok && len(c.txns) <= maxTxns && t.at.Sub(old.at) < txnTTL {
			break
		}
		delete(c.txns, c.txOrder[0])
		c.txOrder = c.txOrder[1:]
	}
}

// lookup returns the request with transaction ID id, if we sent it
// recently.
func (c *packetConn) lookup(id [12]byte) (txn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.txns[id]
	if ok && c.now().Sub(t.at) >= txnTTL {
		return txn{}, false
	}
	return t, ok
}

func (c *packetConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *packetConn) LocalAddr() net.Addr { return c.local }

func (c *packetConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *packetConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	close(c.dlChange)
	c.dlChange = make(chan struct{})
	return nil
}

// SetWriteDeadline is accepted and ignored: sends never block.
func (c *packetConn) SetWriteDeadline(time.Time) error { return nil }

var _ net.PacketConn = (*packetConn)(nil)
