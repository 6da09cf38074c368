package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
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
// the peer's current path (handshakeRetryAfter, at most handshakeRetries
// times, never past RekeyTimeout when wireguard-go sends a new one of its
// own):
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
	ep    conn.Endpoint // where it went, when sent straight
	first int64         // unix ns of the first send
	last  int64         // unix ns of the last send
	tries int           // sent again so many times
	msg   [wgSizeInitiation]byte
	n     int
}

// handshakes is the Bind's set of pending handshake messages. The packet
// path reads n without the lock and takes it only while some message is
// pending (a handshake's round trip, normally).
type handshakes struct {
	mu      sync.Mutex
	pending []pendingHandshake
	n       atomic.Int32 // len(pending)
	resent  atomic.Uint64
	// Initiations dropped because ours to the same peer crossed them and
	// our ID orders first.
	crossedDropped atomic.Uint64
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
	if r, ok := ep.(*RelayEndpoint); ok {
		e.peer, e.known = r.id, true
	} else {
		e.ep = ep
		if t := b.table.Load(); t != nil {
			if i, ok := t.byAddr[endpointAddr(ep)]; ok {
				e.peer, e.known = t.peers[i].id, true
			}
		}
	}
	e.first = b.nowNano()
	e.last = e.first
	h := &b.hs
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending = deletePending(h.pending, func(p *pendingHandshake) bool { return p.samePeer(&e) })
	if len(h.pending) >= maxPendingHandshake {
		h.pending = append(h.pending[:0], h.pending[1:]...)
	}
	h.pending = append(h.pending, e)
	h.n.Store(int32(len(h.pending)))
}

func (p *pendingHandshake) samePeer(o *pendingHandshake) bool {
	if p.known || o.known {
		return p.known && o.known && p.peer == o.peer
	}
	return endpointAddr(p.ep) == endpointAddr(o.ep)
}

func deletePending(ps []pendingHandshake, drop func(*pendingHandshake) bool) []pendingHandshake {
	out := ps[:0]
	for i := range ps {
		if !drop(&ps[i]) {
			out = append(out, ps[i])
		}
	}
	clear(ps[len(out):]) // drop endpoint references
	return out
}

// noteHandshakeReceived looks at a WireGuard message received from peer
// (known: the relay table named the sender) while some handshake message
// is pending: a response or transport message answers ours; an initiation
// from a peer we sent one to crosses it. It reports whether the message
// must be dropped: an initiation that crossed ours when self, our relay ID,
// orders before the peer's.
func (b *Bind) noteHandshakeReceived(msg []byte, self, peer PeerID, known bool) (drop bool) {
	if len(msg) < wgMinSizeTransport || msg[1] != 0 || msg[2] != 0 || msg[3] != 0 {
		return false
	}
	if msg[0] == wgTypeInitiation {
		if !known || len(msg) != wgSizeInitiation {
			return false
		}
		return b.crossed(self, peer)
	}
	var answered func(*pendingHandshake) bool
	switch msg[0] {
	case wgTypeResponse:
		if len(msg) != wgSizeResponse {
			return
		}
		rx := binary.LittleEndian.Uint32(msg[8:12])
		answered = func(p *pendingHandshake) bool { return p.typ == wgTypeInitiation && p.index == rx }
	case wgTypeTransport:
		rx := binary.LittleEndian.Uint32(msg[4:8])
		answered = func(p *pendingHandshake) bool { return p.typ == wgTypeResponse && p.index == rx }
	default:
		return false
	}
	h := &b.hs
	h.mu.Lock()
	h.pending = deletePending(h.pending, answered)
	h.n.Store(int32(len(h.pending)))
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
	h.pending = deletePending(h.pending, func(p *pendingHandshake) bool { return p.typ == wgTypeInitiation && p.known && p.peer == peer })
	h.n.Store(int32(len(h.pending)))
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
	h.pending = deletePending(h.pending, func(p *pendingHandshake) bool {
		if now-p.first >= int64(handshakeGiveUp) || p.tries >= handshakeRetries {
			return true // wireguard-go's own retry takes over
		}
		if now-p.last >= int64(handshakeRetryAfter) {
			p.tries++
			p.last = now
			due = append(due, *p)
		}
		return false
	})
	h.n.Store(int32(len(h.pending)))
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
				return b.inner.Send([][]byte{msg}, pp.ep)
			}
		}
	}
	if p.ep == nil {
		if p.known {
			return b.sendRelayed([][]byte{msg}, p.peer)
		}
		return errNoRelayRoute
	}
	return b.inner.Send([][]byte{msg}, p.ep)
}

// noteDirectHandshakeReceived is noteHandshakeReceived for a datagram that
// came straight from src: the peer is whoever src belongs to, if anyone.
func (b *Bind) noteDirectHandshakeReceived(t *relayTable, msg []byte, src netip.AddrPort) (drop bool) {
	if t == nil {
		return false
	}
	i, ok := t.byAddr[src]
	return b.noteHandshakeReceived(msg, t.self, t.peers[i].id, ok)
}
