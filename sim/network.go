package sim

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/weavewg/weavewg/discovery"
)

// Network is an in-memory network of hosts, one per IP. Connections are
// net.Pipe pairs; each host's sent frames and bytes are counted. Hosts are
// in partition groups (0 unless set): a dial across groups fails and
// SetGroups cuts every connection that crosses.
type Network struct {
	mu        sync.Mutex
	listeners map[netip.AddrPort]*listener
	group     map[netip.Addr]int
	pipes     map[*pipe]struct{}
	nextPort  uint16
	traffic   map[netip.Addr]*Traffic
}

// Traffic counts what one host sent: frames (one Write each; the control
// protocol writes one frame per Write) and bytes.
type Traffic struct {
	Msgs, Bytes atomic.Uint64
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{
		listeners: map[netip.AddrPort]*listener{},
		group:     map[netip.Addr]int{},
		pipes:     map[*pipe]struct{}{},
		nextPort:  32768,
		traffic:   map[netip.Addr]*Traffic{},
	}
}

// Host returns the discovery.Network of the host at ip.
func (n *Network) Host(ip netip.Addr) discovery.Network {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.traffic[ip] == nil {
		n.traffic[ip] = &Traffic{}
	}
	return hostNet{n: n, ip: ip, tr: n.traffic[ip]}
}

// Traffic returns the counters of the host at ip (nil if unknown).
func (n *Network) Traffic(ip netip.Addr) *Traffic {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.traffic[ip]
}

// SetGroups moves hosts into partition groups (absent: unchanged) and cuts
// every open connection whose ends are now in different groups, as a
// failed link does once TCP gives up.
func (n *Network) SetGroups(groups map[netip.Addr]int) {
	n.mu.Lock()
	for ip, g := range groups {
		n.group[ip] = g
	}
	var cut []*pipe
	for p := range n.pipes {
		if n.group[p.a] != n.group[p.b] {
			cut = append(cut, p)
			delete(n.pipes, p)
		}
	}
	n.mu.Unlock()
	for _, p := range cut {
		p.close()
	}
}

// pipe is one connection, for cutting.
type pipe struct {
	a, b   netip.Addr
	c1, c2 net.Conn
}

func (p *pipe) close() {
	p.c1.Close()
	p.c2.Close()
}

type hostNet struct {
	n  *Network
	ip netip.Addr
	tr *Traffic
}

func (h hostNet) Listen(addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("sim: listen address %q: %w", addr, err)
	}
	if ap.Addr() != h.ip {
		return nil, fmt.Errorf("sim: host %v cannot listen on %v", h.ip, ap)
	}
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	if h.n.listeners[ap] != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: syscall.EADDRINUSE}
	}
	l := &listener{n: h.n, ap: ap, ch: make(chan net.Conn), done: make(chan struct{})}
	h.n.listeners[ap] = l
	return l, nil
}

func (h hostNet) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	n := h.n
	n.mu.Lock()
	l := n.listeners[ap]
	if l == nil || n.group[ap.Addr()] != n.group[h.ip] {
		n.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	n.nextPort++
	if n.nextPort == 0 {
		n.nextPort = 32768
	}
	local := netip.AddrPortFrom(h.ip, n.nextPort)
	client, server := newConnPair(local, ap, h.tr, n.traffic[ap.Addr()])
	p := &pipe{a: h.ip, b: ap.Addr(), c1: client, c2: server}
	n.pipes[p] = struct{}{}
	// Forgotten once both ends closed: the set held every connection
	// ever made (duplicates, referrals, failed handshakes), and a
	// partition read them all.
	var ends atomic.Int32
	forget := func() {
		if ends.Add(1) == 2 {
			n.mu.Lock()
			delete(n.pipes, p)
			n.mu.Unlock()
		}
	}
	client.closed, server.closed = forget, forget
	n.mu.Unlock()
	select {
	case l.ch <- server:
		return client, nil
	case <-l.done:
	case <-ctx.Done():
	}
	n.mu.Lock()
	delete(n.pipes, p)
	n.mu.Unlock()
	p.close()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
}

type listener struct {
	n    *Network
	ap   netip.AddrPort
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		l.n.mu.Lock()
		if l.n.listeners[l.ap] == l {
			delete(l.n.listeners, l.ap)
		}
		l.n.mu.Unlock()
		close(l.done)
	})
	return nil
}

func (l *listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.ap) }
