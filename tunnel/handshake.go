package tunnel

import (
	"bytes"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Handshake retransmission.
//
// wireguard-go sends a handshake initiation and then starts no other for
// RekeyTimeout (5 s): SendHandshakeInitiation returns at once while the last
// handshake message it sent (initiation or response) is younger than that,
// whatever asked for it (new data, a keepalive switched on). So one lost
// handshake message costs the user's first packet 5 s. On a cold start that
// loss is likely: a relay learns a NATed peer's mapping from the peer's
// first authenticated datagram, up to a second after gossip made the peer
// reachable, and until then it forwards to gossip's guess of the listen
// port, which the peer's NAT drops (TestNAT's cold start: an initiation
// between two ideal-EIM hosts, relayed by a public host that had not heard
// from them yet, was lost and the first ping was answered after 5 s).
//
// So the Bind keeps a copy of the last handshake message our wireguard-go
// sent each peer, until it is answered, and sends the same bytes again on
// the peer's current path (handshakeRetryAfter, or twice the path's probe
// round trip if longer: retryAfter; at most handshakeRetries times, never
// past RekeyTimeout when wireguard-go sends a new one of its own):
//
//   - an initiation is answered by a response naming its sender index; a
//     copy that arrives after the first one got through is refused by the
//     responder (its timestamp is not newer) and changes nothing;
//   - a response is answered by the initiator's first transport message
//     (wireguard-go sends a keepalive at once) naming its sender index; a
//     second copy finds the initiator's handshake state gone and is
//     dropped.
//
// Crossing handshakes: both sides of a pair may start one at once (each
// keeps the other alive, or each has data). wireguard-go resolves that
// badly: each consumes the other's initiation, which replaces its own
// handshake state, so each refuses the other's response, and both wait
// for the 5 s retry (seen in TestNAT between a public host that did not
// know yet that it is public and a NATed one, both keeping the other
// alive). So when an initiation arrives from a peer ours is pending for,
// the pair's relay IDs decide: the smaller one's Bind drops the peer's
// initiation (counted) and keeps sending its own; the larger one's lets it
// through and forgets its own, whose copies would otherwise replace the
// handshake state the peer keeps for our response. Whichever of the two
// initiations got through first, the smaller side's completes. Only while
// ours is fresh (younger than handshakeRetryAfter): wireguard-go can
// consume our initiation and lose that state to its own before it
// responds ("handshake initiation must be consumed first", seen in
// TestNAT), after which our copies are refused as replays and only the
// peer's initiation, sent again by its Bind, can complete the pair.
// Answering a peer's initiation (a response sent) forgets ours too.
//
// The receive path looks for answers only in packets from a peer that has
// a message pending: each pending message counts itself on its peer's
// pathState (hsPending), so a transport packet from any other peer costs
// one atomic load, no lock, however many of the other peers' handshakes
// are pending (with hundreds of peers some always is). A message whose
// peer the relay table did not name when it was sent (unattached) is
// looked for in every packet while it is pending, and a packet from an
// address the table does not know (a peer that roamed) is matched against
// every pending message, as before.
const (
	handshakeRetryAfter = 500 * time.Millisecond
	handshakeRetries    = 4
	handshakeGiveUp     = 5 * time.Second // wireguard-go's RekeyTimeout: it sends a new one then
	maxPendingHandshake = 256             // bound on the copies kept; the oldest goes first
)

// pendingHandshake is the copy of one handshake message we sent.
type pendingHandshake struct {
	typ   byte   // wgTypeInitiation or wgTypeResponse
	index uint32 // our sender index in it
	// Who it is for: peer (known) when the relay table names the
	// destination; else only the endpoint it went to.
	peer  PeerID
	known bool
	// ps is the peer's path state, whose hsPending counts this message;
	// nil when the relay table did not have the peer (counted in
	// handshakes.unattached instead).
	ps    *pathState
	ep    conn.Endpoint // where it went, when sent straight
	first int64         // unix ns of the first send
	last  int64         // unix ns of the last send
	tries int           // sent again so many times
	msg   [wgSizeInitiation]byte
	n     int
}

// retryAfter is how long (ns) a copy waits unanswered before the next:
// handshakeRetryAfter, or twice the probe round trip last measured on the
// peer's path if that is longer. A copy is for a message lost on the way;
// one whose answer is only late is not lost, and a relay starved of CPU
// (the VM test: probe round trips through it of 58 s) got four more
// copies of every handshake of every pair it relayed, queued behind the
// rest and lengthening the queue they waited in.
func (p *pendingHandshake) retryAfter() int64 {
	d := int64(handshakeRetryAfter)
	if p.ps != nil {
		rtt := p.ps.rtt.Load()
		if p.ps.relayed.Load() {
			rtt = p.ps.relayRTT.Load()
		}
		d = max(d, 2*rtt)
	}
	return d
}

// handshakes is the Bind's set of pending handshake messages. The packet
// path reads n, unattached and the sender's pathState.hsPending without
// the lock and takes it only for a packet that may answer or cross one of
// them (see mayConcern).
type handshakes struct {
	mu      sync.Mutex
	pending []pendingHandshake
	n       atomic.Int32 // len(pending)
	// unattached counts the pending messages with no pathState (ps nil).
	unattached atomic.Int32
	resent     atomic.Uint64
	// Initiations dropped because ours to the same peer crossed them and
	// our ID orders first.
	crossedDropped atomic.Uint64
	// Initiations of ours not sent: their answer would reach the kernel
	// socket (kernelpeers.go).
	toKernelDropped atomic.Uint64
}

// handshakeType is the type of a WireGuard handshake message (initiation or
// response), 0 for anything else.
func handshakeType(b []byte) byte {
	if len(b) < 4 || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return 0
	}
	switch {
	case b[0] == wgTypeInitiation && len(b) == wgSizeInitiation,
		b[0] == wgTypeResponse && len(b) == wgSizeResponse:
		return b[0]
	}
	return 0
}

// noteHandshakeSent keeps a copy of the handshake message msg that
// wireguard-go sends to ep. A new message to a peer replaces what was
// pending for it (wireguard-go holds one handshake state per peer).
func (b *Bind) noteHandshakeSent(msg []byte, ep conn.Endpoint) {
	typ := handshakeType(msg)
	if typ == 0 {
		return
	}
	e := pendingHandshake{typ: typ, index: binary.LittleEndian.Uint32(msg[4:8])}
	e.n = copy(e.msg[:], msg)
	t := b.table.Load()
	if r, ok := ep.(*RelayEndpoint); ok {
		e.peer, e.known = r.id, true
		if t != nil {
			if i := t.lookup(r.id); i >= 0 {
				e.ps = t.peers[i].path
			}
		}
	} else {
		e.ep = ep
		if t != nil {
			if i, ok := t.byAddr[endpointAddr(ep)]; ok {
				e.peer, e.known, e.ps = t.peers[i].id, true, t.peers[i].path
			}
		}
	}
	e.first = b.nowNano()
	e.last = e.first
	h := &b.hs
	h.mu.Lock()
	defer h.mu.Unlock()
	h.deleteLocked(func(p *pendingHandshake) bool { return p.samePeer(&e) })
	if len(h.pending) >= maxPendingHandshake {
		h.deleteLocked(func(p *pendingHandshake) bool { return p == &h.pending[0] })
	}
	h.pending = append(h.pending, e)
	h.counted(&e, 1)
	h.n.Store(int32(len(h.pending)))
}

// counted adds d to the count that p is in: its peer's hsPending, or
// unattached. h.mu is held.
func (h *handshakes) counted(p *pendingHandshake, d int32) {
	if p.ps != nil {
		p.ps.hsPending.Add(d)
	} else {
		h.unattached.Add(d)
	}
}

// deleteLocked removes the pending messages drop picks, uncounting them.
// h.mu is held.
func (h *handshakes) deleteLocked(drop func(*pendingHandshake) bool) {
	out := h.pending[:0]
	for i := range h.pending {
		if p := &h.pending[i]; drop(p) {
			h.counted(p, -1)
		} else {
			out = append(out, *p)
		}
	}
	clear(h.pending[len(out):]) // drop endpoint and path references
	h.pending = out
	h.n.Store(int32(len(out)))
}

// answerLocked removes the pending message of type typ with sender index
// index, if any (no closure: it runs on the packet path). h.mu is held.
func (h *handshakes) answerLocked(typ byte, index uint32) {
	for i := range h.pending {
		if p := &h.pending[i]; p.typ == typ && p.index == index {
			h.counted(p, -1)
			last := len(h.pending) - 1
			copy(h.pending[i:], h.pending[i+1:])
			h.pending[last] = pendingHandshake{}
			h.pending = h.pending[:last]
			h.n.Store(int32(last))
			return
		}
	}
}

// mayConcern reports whether a message from the peer whose path state is
// ps (nil: a sender the relay table does not know) may answer or cross a
// pending message: ps has one pending, or a message is pending whose peer
// was not known when sent; for an unknown sender, any pending message (the
// peer may have roamed to an address the table does not have yet). It
// takes no lock.
func (h *handshakes) mayConcern(ps *pathState) bool {
	if ps == nil {
		return h.n.Load() > 0
	}
	return ps.hsPending.Load() > 0 || h.unattached.Load() > 0
}

func (p *pendingHandshake) samePeer(o *pendingHandshake) bool {
	if p.known || o.known {
		return p.known && o.known && p.peer == o.peer
	}
	return endpointAddr(p.ep) == endpointAddr(o.ep)
}

// noteHandshakeReceived looks at a WireGuard message received from peer
// p (nil: the relay table does not know the sender) while some handshake
// message is pending: a response or transport message answers ours; an
// initiation from a peer we sent one to crosses it. It reports whether the
// message must be dropped: an initiation that crossed ours when self, our
// relay ID, orders before the peer's. A message from a peer with nothing
// pending costs an atomic load or two (mayConcern); none takes a lock or
// allocates unless it may concern a pending message.
func (b *Bind) noteHandshakeReceived(msg []byte, self PeerID, p *relayPeer) (drop bool) {
	if len(msg) < wgMinSizeTransport || msg[1] != 0 || msg[2] != 0 || msg[3] != 0 {
		return false
	}
	var ps *pathState
	if p != nil {
		ps = p.path
	}
	h := &b.hs
	if !h.mayConcern(ps) {
		return false
	}
	var (
		typ   byte
		index uint32
	)
	switch msg[0] {
	case wgTypeInitiation:
		if p == nil || len(msg) != wgSizeInitiation {
			return false
		}
		return b.crossed(self, p.id)
	case wgTypeResponse:
		if len(msg) != wgSizeResponse {
			return false
		}
		typ, index = wgTypeInitiation, binary.LittleEndian.Uint32(msg[8:12])
	case wgTypeTransport:
		typ, index = wgTypeResponse, binary.LittleEndian.Uint32(msg[4:8])
	default:
		return false
	}
	h.mu.Lock()
	h.answerLocked(typ, index)
	h.mu.Unlock()
	return false
}

// crossed decides an initiation from peer that may cross ours (see
// Crossing handshakes): true to drop it, ours goes on; false to let it
// through, and ours, if any, is forgotten.
func (b *Bind) crossed(self, peer PeerID) bool {
	h := &b.hs
	h.mu.Lock()
	defer h.mu.Unlock()
	mine := -1
	for i := range h.pending {
		if p := &h.pending[i]; p.typ == wgTypeInitiation && p.known && p.peer == peer {
			mine = i
		}
	}
	if mine < 0 {
		return false
	}
	// Ours goes on only while it is fresh: one that went unanswered for
	// handshakeRetryAfter may never be (the peer's wireguard-go can
	// consume it and then lose the state to its own initiation before it
	// responds, after which our copies are replays), so the peer's, sent
	// again by its Bind, is let through then.
	fresh := b.nowNano()-h.pending[mine].first < int64(handshakeRetryAfter)
	if fresh && bytes.Compare(self[:], peer[:]) < 0 {
		h.crossedDropped.Add(1)
		return true
	}
	h.deleteLocked(func(p *pendingHandshake) bool { return p.typ == wgTypeInitiation && p.known && p.peer == peer })
	return false
}

// handshakesPending reports whether some handshake message is pending (one
// atomic load: the packet path checks it per batch).
func (b *Bind) handshakesPending() bool { return b.hs.n.Load() > 0 }

// retransmitHandshakes sends again every pending handshake message that has
// gone unanswered for handshakeRetryAfter, on its peer's current path: to
// its relay when it is relayed, else to its endpoint (a path that changed
// since, or a relay that learned where the peer is, carries the copy where
// the first was lost). Called by the path loop every probe interval and
// whenever a path changes.
func (b *Bind) retransmitHandshakes() {
	if !b.handshakesPending() {
		return
	}
	now := b.nowNano()
	var due []pendingHandshake
	h := &b.hs
	h.mu.Lock()
	h.deleteLocked(func(p *pendingHandshake) bool {
		if now-p.first >= int64(handshakeGiveUp) || p.tries >= handshakeRetries {
			return true // wireguard-go's own retry takes over
		}
		if now-p.last >= p.retryAfter() {
			p.tries++
			p.last = now
			due = append(due, *p)
		}
		return false
	})
	h.mu.Unlock()
	t := b.table.Load()
	for i := range due {
		if b.resendHandshake(t, &due[i]) == nil {
			h.resent.Add(1)
		}
	}
}

// resendHandshake sends a copy of p on its peer's current path.
func (b *Bind) resendHandshake(t *relayTable, p *pendingHandshake) error {
	msg := append([]byte(nil), p.msg[:p.n]...) // the inner Bind may coalesce into its buffer
	if p.known && t != nil {
		if i := t.lookup(p.peer); i >= 0 {
			pp := &t.peers[i]
			if pp.via >= 0 && pp.path.relayed.Load() {
				return b.sendRelayed([][]byte{msg}, p.peer)
			}
			if pp.ep != nil {
				return b.sendCopy(p, msg, pp.ep)
			}
		}
	}
	if p.ep == nil {
		if p.known {
			return b.sendRelayed([][]byte{msg}, p.peer)
		}
		return errNoRelayRoute
	}
	return b.sendCopy(p, msg, p.ep)
}

// sendCopy sends the copy msg of p straight to ep, unless it is an
// initiation whose answer would reach the kernel socket (the peer moved
// to the kernel device since: kernelpeers.go).
func (b *Bind) sendCopy(p *pendingHandshake, msg []byte, ep conn.Endpoint) error {
	if p.typ == wgTypeInitiation && b.answeredToKernel(ep) {
		b.hs.toKernelDropped.Add(1)
		return errToKernelPeer
	}
	return b.inner.Send([][]byte{msg}, ep)
}
