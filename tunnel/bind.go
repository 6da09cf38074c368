package tunnel

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
)

// PacketHandler receives one datagram that the Bind took out of WireGuard's
// stream, with the address it came from. It runs synchronously on a receive
// goroutine, so it must not block; pkt is reused as soon as it returns, so it
// must copy what it keeps.
type PacketHandler func(pkt []byte, src netip.AddrPort)

// Bind is the conn.Bind of a Tunnel: the one UDP socket of the host. It wraps
// another Bind (conn.NewStdNetBind in production, which keeps recvmmsg,
// sendmmsg and UDP GSO/GRO) and sorts every received datagram with Classify.
// WireGuard datagrams go on to wireguard-go untouched; every other one is
// removed from the batch by setting its size to zero (conn.ReceiveFunc allows
// zero sizes and wireguard-go's receive loop skips them), counted, and given
// to the STUN or relay handler if one is set.
//
// wireguard-go calls Close and then Open on every device Up and every port
// change. Bind keeps no state per Open: each Open wraps the inner Bind's fresh
// receive functions, and the old wrappers return net.ErrClosed because the
// inner ones do.
type Bind struct {
	// Constant after NewBind.
	inner conn.Bind
	ns    netns.NsHandle // namespace Open creates sockets in; netns.None(): the caller's

	learned chan struct{} // signalled (never blocking) when a peer's endpoint was learned
	woke    chan struct{} // signalled (never blocking) when an idle peer carried data (idle.go)

	// Set before the first Open, constant after.
	relayRate  float64          // forwarding budget per source, bytes/s
	relayBurst float64          // and its burst, bytes
	now        func() time.Time // nil: time.Now

	// Atomics, read on the packet path.
	stun     atomic.Pointer[PacketHandler]
	relay    atomic.Pointer[PacketHandler]
	table    atomic.Pointer[relayTable] // nil: relaying off, frames go to the relay handler
	relayedN atomic.Int32               // peers currently relayed; 0 skips a lookup per datagram
	coarse   atomic.Int64               // unix ns, advanced by the path loop: stamps activity (idle.go)
	ctr      counters
	hs       handshakes // handshake messages sent and not yet answered (handshake.go)
	// kernelEPs: the endpoints the kernel WireGuard socket receives from
	// (kernelpeers.go); nil: none.
	kernelEPs atomic.Pointer[map[netip.AddrPort]struct{}]
	// ownMapped: our NAT's WAN addresses as STUN showed them (natanswer.go).
	ownMapped atomic.Pointer[[]netip.Addr]

	// Path MTU probes (mtuprobe.go): verified replies for the MTU loop,
	// and the counters.
	mtuAnswers chan mtuAnswer
	mtuCtr     [numMTUCounters]atomic.Uint64
}

var _ conn.Bind = (*Bind)(nil)

// NewBind wraps inner. If ns is valid (not netns.None()), Open creates the
// sockets in that network namespace whichever thread calls it: wireguard-go
// reopens the Bind from its own goroutines (after the TUN goes down and up,
// for instance), and those may run on threads of another namespace.
func NewBind(inner conn.Bind, ns netns.NsHandle) *Bind {
	return &Bind{inner: inner, ns: ns, relayRate: defaultRelayRate, relayBurst: defaultRelayBurst, learned: make(chan struct{}, 1), woke: make(chan struct{}, 1),
		mtuAnswers: make(chan mtuAnswer, 256)}
}

// SetSTUNHandler sets (or, with nil, clears) the function given STUN datagrams.
func (b *Bind) SetSTUNHandler(h PacketHandler) { storeHandler(&b.stun, h) }

// SetRelayHandler sets (or, with nil, clears) the function given relay frames.
// A handler, when set, takes relay frames in place of the built-in relaying.
func (b *Bind) SetRelayHandler(h PacketHandler) { storeHandler(&b.relay, h) }

func storeHandler(p *atomic.Pointer[PacketHandler], h PacketHandler) {
	if h == nil {
		p.Store(nil)
		return
	}
	p.Store(&h)
}

// Counters reports the sorting counters by name (the Counter* constants).
func (b *Bind) Counters() map[string]uint64 {
	m := b.ctr.snapshot()
	for i := range b.mtuCtr {
		m[mtuCounterNames[i]] = b.mtuCtr[i].Load()
	}
	m[CounterHandshakeRetransmits] = b.hs.resent.Load()
	m[CounterHandshakeCrossedDropped] = b.hs.crossedDropped.Load()
	m[CounterHandshakeToKernelDropped] = b.hs.toKernelDropped.Load()
	m[CounterNATPortUnreachable] = b.ctr.natAnswers.Load()
	return m
}

// Open opens the inner Bind, in b's namespace if it has one, and wraps its
// receive functions.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	var (
		fns    []conn.ReceiveFunc
		actual uint16
		err    error
	)
	if nerr := b.inNetns(func() { fns, actual, err = b.inner.Open(port) }); nerr != nil {
		return nil, 0, nerr
	}
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.wrap(fn)
	}
	return wrapped, actual, nil
}

// inNetns runs f with the calling thread in b.ns. When the thread is there
// already (the daemon runs wholly inside its namespace) it only costs the
// check.
func (b *Bind) inNetns(f func()) error {
	if !b.ns.IsOpen() {
		f()
		return nil
	}
	runtime.LockOSThread()
	cur, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("bind: reading the thread's network namespace: %w", err)
	}
	defer cur.Close()
	if cur.Equal(b.ns) {
		runtime.UnlockOSThread()
		f()
		return nil
	}
	if err := netns.Set(b.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("bind: entering the tunnel's network namespace: %w", err)
	}
	f()
	if err := netns.Set(cur); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so
		// that the runtime never schedules another goroutine onto it.
		return nil
	}
	runtime.UnlockOSThread()
	return nil
}

// wrap returns a ReceiveFunc that calls fn and sorts what it received.
func (b *Bind) wrap(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(packets, sizes, eps)
		if n > 0 {
			b.sortBatch(packets[:n], sizes[:n], eps[:n])
		}
		return n, err
	}
}

// sortBatch classifies each datagram of a received batch, zeroes the size of
// every one that is not WireGuard, hands STUN and relay datagrams to their
// handlers, and adds up the counters once per batch. Relay frames, when the
// Bind has a relay table and no relay handler, are relayed here: a data
// frame for us stays in the batch unwrapped, others are forwarded in groups
// after the loop (handleRelay). It takes no lock held across a send and does
// not allocate (the handlers may; forwarding uses a pooled batch).
func (b *Bind) sortBatch(packets [][]byte, sizes []int, eps []conn.Endpoint) {
	var (
		n                             [numKinds]uint64
		stunUnhandled, relayUnhandled uint64
		rx                            relayRx
	)
	rx.t = b.table.Load()
	relayed := rx.t != nil && b.relayedN.Load() > 0
	var (
		activeSrc netip.AddrPort // the last data sender of the batch, looked up once
		activeIdx int32          = -1
	)
	hsPending := b.handshakesPending() // handshake.go: look for answers
	for i, size := range sizes {
		if size <= 0 {
			continue
		}
		pkt := packets[i][:size]
		k := Classify(pkt)
		n[k]++
		switch k {
		case KindWireGuard:
			if rx.t != nil && isWireGuardData(pkt) {
				if src := endpointAddr(eps[i]); src != activeSrc || activeIdx < 0 {
					activeSrc, activeIdx = src, -1
					if j, ok := rx.t.byAddr[src]; ok {
						activeIdx = j
					}
				}
				if activeIdx >= 0 {
					b.markActive(rx.t, activeIdx)
				}
			}
			if hsPending && rx.t != nil { // handshake.go: an answer, or a crossing initiation?
				var p *relayPeer // the sender; nil: not a member
				if isWireGuardData(pkt) {
					if activeIdx >= 0 { // looked up above
						p = &rx.t.peers[activeIdx]
					}
				} else if j, ok := rx.t.byAddr[endpointAddr(eps[i])]; ok {
					p = &rx.t.peers[j]
				}
				if b.noteHandshakeReceived(pkt, rx.t.self, p) {
					sizes[i] = 0 // an initiation that crossed ours
					continue
				}
			}
			if relayed {
				rx.t.wireGuardEndpoint(endpointAddr(eps[i]), &eps[i])
			}
			continue
		case KindSTUN:
			if h := b.stun.Load(); h != nil {
				(*h)(pkt, endpointAddr(eps[i]))
			} else {
				stunUnhandled++
			}
		case KindRelay:
			if h := b.relay.Load(); h != nil {
				(*h)(pkt, endpointAddr(eps[i]))
			} else if rx.t != nil {
				if rx.now == 0 {
					rx.now = b.nowNano()
				}
				if m := b.handleRelay(&rx, pkt, endpointAddr(eps[i]), &eps[i]); m > 0 {
					sizes[i] = m
					continue
				}
			} else {
				relayUnhandled++
			}
		}
		sizes[i] = 0
	}
	b.flushForward(&rx)
	if rx.learned {
		select {
		case b.learned <- struct{}{}:
		default:
		}
	}
	b.ctr.addRelay(&rx.n)
	b.ctr.batches.Add(1)
	for k := range n {
		if n[k] != 0 {
			b.ctr.byKind[k].Add(n[k])
		}
	}
	if stunUnhandled != 0 {
		b.ctr.stunUnhandled.Add(stunUnhandled)
	}
	if relayUnhandled != 0 {
		b.ctr.relayUnhandled.Add(relayUnhandled)
	}
}

// endpointAddr is the source address of a received datagram. The std Bind's
// endpoints carry it as a netip.AddrPort; others are parsed from text.
func endpointAddr(ep conn.Endpoint) netip.AddrPort {
	switch ep := ep.(type) {
	case *conn.StdNetEndpoint:
		return ep.AddrPort
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(ep.DstToString())
	return ap
}

// SendTo sends one datagram (a STUN answer, a relay frame) from the shared
// port to dst.
func (b *Bind) SendTo(pkt []byte, dst netip.AddrPort) error {
	ep, err := b.inner.ParseEndpoint(dst.String())
	if err != nil {
		return err
	}
	return b.inner.Send([][]byte{pkt}, ep)
}

// Close closes the inner Bind; the receive functions of the last Open then
// return net.ErrClosed.
func (b *Bind) Close() error { return b.inner.Close() }

// SetMark sets SO_MARK on the inner Bind's sockets.
func (b *Bind) SetMark(mark uint32) error { return b.inner.SetMark(mark) }

// Send sends a batch to ep through the inner Bind; to a RelayEndpoint it
// sends the batch wrapped in relay headers to the next hop (sendRelayed).
// A handshake message is kept until answered (handshake.go).
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if len(bufs) == 1 && handshakeType(bufs[0]) != 0 {
		if bufs[0][0] == wgTypeInitiation && b.answeredToKernel(ep) {
			b.hs.toKernelDropped.Add(1) // kernelpeers.go: it could never complete
			return nil
		}
		b.noteHandshakeSent(bufs[0], ep) // handshake.go: sent again if unanswered
	}
	if r, ok := ep.(*RelayEndpoint); ok {
		return b.sendRelayed(bufs, r.id)
	}
	if t := b.table.Load(); t != nil && anyWireGuardData(bufs) {
		if i, ok := t.byAddr[endpointAddr(ep)]; ok {
			b.markActive(t, i)
		}
	}
	return b.inner.Send(bufs, ep)
}

// ParseEndpoint parses "relay:<peer ID hex>" as a RelayEndpoint and anything
// else with the inner Bind.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if strings.HasPrefix(s, relayEndpointPrefix) {
		return ParseRelayEndpoint(s)
	}
	return b.inner.ParseEndpoint(s)
}

// BatchSize is the inner Bind's batch size.
func (b *Bind) BatchSize() int { return b.inner.BatchSize() }
