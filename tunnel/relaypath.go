package tunnel

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weavewg/weavewg/pmtu"
	"github.com/weavewg/weavewg/types/key"
)

// relayTable is the Bind's view of the peers for relaying: an immutable
// snapshot built by the control path (Tunnel.SetPeers) and swapped in with
// one atomic store, so the packet path reads it without a lock. What changes
// between snapshots, the path chosen per peer and its probe figures, lives in
// the pathState each entry points to; a peer keeps its pathState across
// snapshots.
type relayTable struct {
	self   PeerID
	peers  []relayPeer
	byID   map[PeerID]int32
	byAddr map[netip.AddrPort]int32 // direct UDP addresses (configured and learned) → peer; members only
}

type relayPeer struct {
	key     key.Public
	id      PeerID
	addr    netip.AddrPort // direct UDP address: learned if any, else configured; invalid if unknown
	ep      conn.Endpoint  // the inner Bind's endpoint for addr; nil if unknown
	relayEP *RelayEndpoint // handed to wireguard-go for frames from this peer
	via     int32          // index of the peer to relay through; -1: none
	pairKey *[32]byte      // probe MAC key of us and this peer (auth.go); nil: none
	hopTx   *[32]byte      // MAC key of hops we send it (hop.go); nil: none
	hopRx   *[32]byte      // MAC key of hops it sends us; nil: none
	path    *pathState
}

// pathState is the path choice and probe figures of one peer. The probe loop
// writes it; the packet path reads it. Every field is atomic.
type pathState struct {
	relayed   atomic.Bool  // send through via, not straight to addr
	lastReply atomic.Int64 // unix ns of the last direct probe reply; 0: none
	rtt       atomic.Int64 // ns, last direct probe round trip
	relayRTT  atomic.Int64 // ns, last relayed probe round trip
	lastRelay atomic.Int64 // unix ns the newest answered relayed probe was sent; 0: none
	added     int64        // unix ns the peer appeared; constant
	bucket    tokenBucket  // forwarding budget of frames from this peer

	// learned is a mailbox from the packet path to the path loop: the
	// address the peer's last authenticated direct probe or reply came
	// from, when that differed from where we send (paths.go takes it).
	learned atomic.Pointer[netip.AddrPort]
	sendCtr atomic.Uint64 // our probe counter for this pair
	replay  replayFilter  // the peer's probe counters seen

	hopSend atomic.Uint64 // our hop counter towards this peer (hop.go)
	hopRecv hopReplay     // its hop counters seen

	// Idle pairs (idle.go): the packet path stamps lastActive (the Bind's
	// coarse clock, unix ns) on data; the path loop sets idle from reach.
	lastActive atomic.Int64
	idle       atomic.Bool
	// hold: no direct probes for now, the peer's NAT must see its own
	// host's datagram first (reach.Path.Hold; relayed probes go on).
	hold atomic.Bool
	// opening: our turn to send first, to the peer's mapping: our probes
	// say so (reach.Path.Opening). peerOpening: unix ns the peer's probe
	// last said so (a mailbox to the path loop; 0: never).
	opening     atomic.Bool
	peerOpening atomic.Int64
	// openingSince: unix ns of our first direct probe of this opening
	// turn (0: not opening); the word goes out a probe interval later,
	// with natAnswers if the probe brought back ICMP port unreachable
	// from the peer's NAT (natanswer.go; unix ns, 0: never).
	openingSince atomic.Int64
	natAnswers   atomic.Int64
	// takesIn: unix ns the peer's probe last said our NAT took its
	// datagram in (0: never; a mailbox to the path loop).
	takesIn atomic.Int64
	// saysRelayed, saysDirect: unix ns the peer's probe last said it
	// relays to us, and last said it does not (probeFlagRelaying; 0:
	// never; mailboxes to the path loop).
	saysRelayed, saysDirect atomic.Int64
	// relayProbeAt: unix ns our last probe through the relay went (the
	// path loop's; relayProbeEvery).
	relayProbeAt atomic.Int64
	// hsPending: handshake messages we sent this peer that are not
	// answered yet (handshake.go, written under its lock). The packet
	// path looks for answers only in packets from a peer whose count is
	// not 0.
	hsPending atomic.Int32
}

// newPathState is the state of a peer first seen at now (unix ns). The
// probe counter starts at now so that it keeps growing across restarts.
func newPathState(now int64) *pathState {
	ps := &pathState{added: now}
	ps.sendCtr.Store(uint64(now))
	ps.hopSend.Store(uint64(now))
	return ps
}

// lookup returns the index of id, or -1.
func (t *relayTable) lookup(id PeerID) int32 {
	if i, ok := t.byID[id]; ok {
		return i
	}
	return -1
}

// maxViaDepth bounds the walk through relays that are themselves relayed.
const maxViaDepth = 4

// nextHop is where to send a frame for peer i: its own address if its path
// is direct, else the next hop of its relay (which may itself be relayed).
// nil when there is no address.
func (t *relayTable) nextHop(i int32) conn.Endpoint {
	return t.peers[t.nextHopIndex(i)].ep
}

// nextHopIndex is the peer a frame for peer i is sent to (see nextHop).
func (t *relayTable) nextHopIndex(i int32) int32 {
	for range maxViaDepth {
		p := &t.peers[i]
		if p.via < 0 || !p.path.relayed.Load() {
			return i
		}
		i = p.via
	}
	return i
}

// sendHop seals frame for the hop to peer j and sends it there alone.
func (b *Bind) sendHop(t *relayTable, j int32, frame []byte, ep conn.Endpoint) error {
	p := &t.peers[j]
	if p.hopTx == nil {
		return errNoHopKey
	}
	sealHop(frame, p.hopTx, p.path.hopSend.Add(1))
	rb := getRelayBatch()
	rb.bufs = append(rb.bufs, frame)
	err := b.inner.Send(rb.bufs, ep)
	putRelayBatch(rb)
	return err
}

// relayBatch is a pooled send batch. Frames we wrap are laid end to end in
// mem, and each frame's slice keeps the capacity up to the end of mem: the
// std Bind's UDP GSO (coalesceMessages in wireguard-go's conn/bind_std.go)
// appends the next datagram to the first one of a segment only if it fits in
// that buffer's capacity, so frames in separate buffers would each go out
// as their own sendmmsg message. Laid out this way every append lands where
// the frame already is, and a batch leaves as a few GSO sends. mem keeps its
// capacity from one use to the next, so wrapping does not allocate once the
// pool is warm.
type relayBatch struct {
	bufs [][]byte // the frames to send, aliasing mem or the receive buffers
	mem  []byte
}

// fullRelayFrameLen is the size of a relayed full-size WireGuard message at
// the default MTU (relay.go), to size a batch's buffer.
const fullRelayFrameLen = RelayHeaderLen + pmtu.DefaultMTU + pmtu.WireGuardHeader

var relayBatchPool = sync.Pool{New: func() any { return new(relayBatch) }}

func getRelayBatch() *relayBatch { return relayBatchPool.Get().(*relayBatch) }

func putRelayBatch(rb *relayBatch) {
	clear(rb.bufs) // drop references to receive buffers
	rb.bufs = rb.bufs[:0]
	relayBatchPool.Put(rb)
}

// wrap appends to rb.bufs the datagrams of bufs, each behind the header h
// sealed for the next hop with key k and the counters from ctr on, end to
// end in rb.mem.
func (rb *relayBatch) wrap(bufs [][]byte, h RelayHeader, k *[32]byte, ctr uint64) {
	total := 0
	for _, p := range bufs {
		total += RelayHeaderLen + len(p)
	}
	if cap(rb.mem) < total {
		// Room for a full batch of full-size frames, so that the buffer
		// is made once per pooled batch.
		rb.mem = make([]byte, max(total, conn.IdealBatchSize*fullRelayFrameLen))
	}
	mem := rb.mem[:cap(rb.mem)]
	off := 0
	for _, p := range bufs {
		f := AppendRelayHeader(mem[off:off], h)
		sealHop(f, k, ctr)
		ctr++
		f = append(f, p...)
		rb.bufs = append(rb.bufs, f)
		off += len(f)
	}
}

var (
	errNoRelayRoute = errors.New("relay: no route to peer")
	errNoHopKey     = errors.New("relay: no key for the next hop")
)

// sendRelayed wraps each datagram for dst in a relay header and sends the
// batch to the next hop towards dst. It takes no lock and, with a warm pool,
// does not allocate.
func (b *Bind) sendRelayed(bufs [][]byte, dst PeerID) error {
	t := b.table.Load()
	if t == nil {
		b.ctr.relay[rcNoRoute].Add(uint64(len(bufs)))
		return errNoRelayRoute
	}
	i := t.lookup(dst)
	if i < 0 {
		b.ctr.relay[rcNoRoute].Add(uint64(len(bufs)))
		return errNoRelayRoute
	}
	next := &t.peers[t.nextHopIndex(i)]
	ep := next.ep
	if ep == nil || next.hopTx == nil {
		b.ctr.relay[rcNoRoute].Add(uint64(len(bufs)))
		return errNoRelayRoute
	}
	if anyWireGuardData(bufs) {
		b.markActive(t, i)
	}
	h := relayHeaderFor(RelayTypeData, dst, t.self)
	n := uint64(len(bufs))
	ctr := next.path.hopSend.Add(n) - n + 1
	rb := getRelayBatch()
	rb.wrap(bufs, h, next.hopTx, ctr)
	err := b.inner.Send(rb.bufs, ep)
	putRelayBatch(rb)
	if err != nil {
		b.ctr.relay[rcSendErrors].Add(uint64(len(bufs)))
		return err
	}
	b.ctr.relay[rcSent].Add(uint64(len(bufs)))
	var bytes int
	for _, p := range bufs {
		bytes += len(p)
	}
	b.ctr.relay[rcSentBytes].Add(uint64(bytes))
	return nil
}

// relayRx is the state of handling the relay frames of one received batch:
// outcome counts and the frames to forward.
type relayRx struct {
	t       *relayTable
	now     int64
	n       [numRelayCounters]uint64
	learned bool // some peer's endpoint was learned: wake the path loop
	// The frames to forward, sealed for their next hop, in the order
	// received; flushForward sends them (fwdOrder). nil until a frame is
	// forwarded: pooled, so that a batch that forwards nothing (any of
	// wireguard-go's) does not zero it.
	fwd *forwardHeld
}

type forwardHeld struct {
	f [maxForwardHeld]fwdFrame
	n int
}

var forwardHeldPool = sync.Pool{New: func() any { return new(forwardHeld) }}

// The order a relay forwards a batch in. A relay behind on its socket (a
// starved one: docs/architecture.md, "Relay", the VM's relayed pair)
// forwards what it reads in the order it was queued, and a handshake
// message waits behind the bulk read with it; WireGuard abandons a
// handshake after 5 s, so a late one is as good as lost, where late data
// is only late. So of each batch the handshake messages, path probes and
// their replies, and path MTU replies (a few small frames that decide
// whether a pair has a session and a path at all) are sent first, and
// then WireGuard data and path MTU probes in their order: data grouped by
// next hop (one GSO send each), each MTU probe alone (forwardMTUProbe).
// Within a batch only: the socket's queue in front of the batch stays
// first in, first out.
const (
	fwdUrgent   = iota // handshake messages, probes and replies, MTU replies
	fwdBulk            // WireGuard data (transport messages)
	fwdMTUProbe        // a path MTU probe: sent alone
)

// maxForwardHeld is how many forwarded frames a batch holds before it
// sends them: a whole batch of the std Bind's. A larger one is sent in
// parts, each in fwdOrder.
const maxForwardHeld = conn.IdealBatchSize

// fwdFrame is a frame to forward: it aliases the receive buffer, which
// stays the frame's until the batch is handed back.
type fwdFrame struct {
	pkt  []byte
	ep   conn.Endpoint
	kind uint8
}

// forwardKind is the fwd* kind of a relay frame of type typ with payload.
func forwardKind(typ uint8, payload []byte) uint8 {
	switch typ {
	case RelayTypeData:
		if len(payload) > 0 && payload[0] == wgTypeTransport {
			return fwdBulk
		}
		return fwdUrgent // initiation, response, cookie reply
	case RelayTypeMTUProbe:
		return fwdMTUProbe
	}
	return fwdUrgent // probes, their replies, MTU replies
}

// handleRelay deals with the relay frame packets[i] (size bytes, from src):
// a data frame for us is unwrapped in place and left in the batch (the new
// size is returned, and eps[i] set so that wireguard-go's replies take the
// path we chose); anything else is forwarded, answered or dropped, and 0 is
// returned.
//
// Every frame must first prove its hop (hop.go): its sender is the source
// peer, or with the F bit the member at src; the MAC must be that member's
// and the counter new. A first-hop frame from another address than the
// source peer's endpoint teaches the path owner that address.
func (b *Bind) handleRelay(rx *relayRx, pkt []byte, src netip.AddrPort, ep *conn.Endpoint) int {
	t := rx.t
	h, payload, err := ParseRelayHeader(pkt)
	if err != nil {
		if _, member := t.byAddr[src]; member {
			rx.n[rcMalformed]++
		} else {
			rx.n[rcUnknownSource]++
		}
		return 0
	}
	si := t.lookup(h.Src)
	if si < 0 || h.Src == t.self {
		rx.n[rcUnknownPeer]++
		return 0
	}
	hs := si // who sent this hop
	if h.Forwarded {
		i, member := t.byAddr[src]
		if !member {
			rx.n[rcUnknownSource]++
			return 0
		}
		hs = i
	}
	hp := &t.peers[hs]
	if hp.hopRx == nil || !hopMACValid(hp.hopRx, pkt) {
		rx.n[rcBadMAC]++
		return 0
	}
	if !hp.path.hopRecv.accept(h.Counter) {
		rx.n[rcReplayed]++
		return 0
	}
	if !h.Forwarded && src.IsValid() && src != hp.addr {
		// Authenticated, straight from the peer, from somewhere else than
		// where we send: the peer roamed, or its NAT mapping is not what we
		// knew. Send there from now on (applied by the path loop).
		a := src
		hp.path.learned.Store(&a)
		rx.n[rcEndpointLearned]++
		rx.learned = true
	}
	toUs := h.Dst == t.self
	if toUs {
		switch h.Type {
		case RelayTypeData:
		case RelayTypeMTUProbe, RelayTypeMTUReply:
			b.handleMTUProbe(rx, pkt, h, si, hs, src, *ep) // path MTU (mtuprobe.go)
			return 0
		default:
			b.handleProbe(rx, pkt, h, si, hs, src, *ep)
			return 0
		}
		if !isWireGuard(payload) {
			rx.n[rcMalformed]++
			return 0
		}
		if isWireGuardData(payload) {
			b.markActive(t, si)
		}
		n := copy(pkt, payload) // overlaps payload: test it before
		p := &t.peers[si]
		if b.handshakesPending() && b.noteHandshakeReceived(pkt[:n], t.self, p) {
			return 0 // an initiation that crossed ours (handshake.go)
		}
		if p.path.relayed.Load() || p.ep == nil {
			*ep = p.relayEP
		} else {
			*ep = p.ep
		}
		rx.n[rcDelivered]++
		rx.n[rcDeliveredBytes] += uint64(n)
		return n
	}
	// For another peer: forward.
	di := t.lookup(h.Dst)
	if di < 0 {
		rx.n[rcUnknownPeer]++
		return 0
	}
	if h.HopLimit <= 1 {
		rx.n[rcHopLimit]++
		return 0
	}
	if !t.peers[si].path.bucket.allow(rx.now, len(pkt), b.relayRate, b.relayBurst) {
		rx.n[rcRateLimited]++
		return 0
	}
	ni := t.nextHopIndex(di)
	np := &t.peers[ni]
	next := np.ep
	if next == nil || np.hopTx == nil || ni == hs {
		rx.n[rcNoRoute]++
		return 0
	}
	pkt[relayOffHopLimit] = (h.HopLimit - 1) | relayForwarded
	sealHop(pkt, np.hopTx, np.path.hopSend.Add(1))
	if rx.fwd != nil && rx.fwd.n == len(rx.fwd.f) {
		b.flushForward(rx)
	}
	if rx.fwd == nil {
		rx.fwd = forwardHeldPool.Get().(*forwardHeld)
	}
	kind := forwardKind(h.Type, payload)
	rx.fwd.f[rx.fwd.n] = fwdFrame{pkt: pkt, ep: next, kind: kind}
	rx.fwd.n++
	if kind != fwdMTUProbe { // forwardMTUProbe counts its own
		rx.n[rcForwarded]++
		rx.n[rcForwardedBytes] += uint64(len(pkt))
	}
	return 0
}

// flushForward sends the frames held for forwarding (see fwdOrder): the
// urgent ones first, then the rest in their order, consecutive data frames
// for one next hop in one send.
func (b *Bind) flushForward(rx *relayRx) {
	if rx.fwd == nil {
		return
	}
	held := rx.fwd.f[:rx.fwd.n]
	rb := getRelayBatch()
	var to conn.Endpoint // the next hop of the frames in rb
	send := func() {
		if len(rb.bufs) == 0 {
			return
		}
		if err := b.inner.Send(rb.bufs, to); err != nil {
			rx.n[rcSendErrors] += uint64(len(rb.bufs))
		}
		clear(rb.bufs)
		rb.bufs = rb.bufs[:0]
	}
	add := func(f *fwdFrame) {
		if to != f.ep {
			send()
			to = f.ep
		}
		rb.bufs = append(rb.bufs, f.pkt)
	}
	for i := range held {
		if held[i].kind == fwdUrgent {
			add(&held[i])
		}
	}
	for i := range held {
		switch held[i].kind {
		case fwdBulk:
			add(&held[i])
		case fwdMTUProbe:
			send()
			b.forwardMTUProbe(rx, held[i].pkt, held[i].ep) // alone, with DF (mtuprobe.go)
		}
	}
	send()
	putRelayBatch(rb)
	clear(held) // drop references to the receive buffers
	rx.fwd.n = 0
	forwardHeldPool.Put(rx.fwd)
	rx.fwd = nil
}

// wireGuardEndpoint is called for a direct WireGuard datagram from src while
// some peer is relayed: if src is a relayed peer's address, the datagram's
// endpoint becomes that peer's relay endpoint, so that wireguard-go's roaming
// does not undo the path choice (it adopts the endpoint of every
// authenticated packet).
func (t *relayTable) wireGuardEndpoint(src netip.AddrPort, ep *conn.Endpoint) {
	if i, ok := t.byAddr[src]; ok {
		if p := &t.peers[i]; p.via >= 0 && p.path.relayed.Load() {
			*ep = p.relayEP
		}
	}
}

// setRelayTable installs a new snapshot.
func (b *Bind) setRelayTable(t *relayTable) { b.table.Store(t) }

// nowNano reads the Bind's clock.
func (b *Bind) nowNano() int64 {
	if b.now != nil {
		return b.now().UnixNano()
	}
	return time.Now().UnixNano()
}
