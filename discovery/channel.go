package discovery

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/weavewg/weavewg/types/key"
)

// Named channels carry other subsystems' messages (ipam, dns) over the
// control connections, hop by hop along the gossiped routes, so peers with no
// direct connection still hear each other.
//
// A channel message (control protocol v2):
//
//	+--------+---------+--------+----------+---------+---------+--------+---------+-----------+
//	| type 1 | flags 1 | nlen 1 | name     | src 32  | dst 32  | hops 1 | payload | signature |
//	| (4)    |         |        | (≤ 32 B) | key     | key     |        |         | 64        |
//	+--------+---------+--------+----------+---------+---------+--------+---------+-----------+
//
//	flags: bit 0 broadcast; other bits must be zero.
//
// The signature is src's (key.Sign, domain "weavewg channel v1") over
//
//	flags | nlen | name | src | dst, or 32 zero bytes if broadcast | payload
//
// — everything but the hop count, which relays decrement. So the sender a
// handler is told is the peer that made the message, checked end to end
// whatever the hops in between, not what the message claims; a message
// whose signature fails is dropped at its destination and counted
// (gossip_channel_bad_signature). A broadcast is signed once for every
// destination (and may be delivered to any of them). Relays do not check
// signatures: the destination does, off the router's lock. A member can
// replay another's old message; the payloads carried (ring, name table,
// token registry states) are versioned CRDT states, for which a replay is
// a stale duplicate.
//
// Each hop delivers it when dst is itself and otherwise forwards it to its own
// next hop towards dst with hops decremented; a message whose hops reach zero
// is dropped, so a transient routing loop cannot keep a message alive. Routes
// are symmetric and agreed on by every relay (topology.go). Broadcast is a
// unicast to every reachable peer: simple, loop-free, and O(peers) for the
// sender, which suits the sizes weavewg runs at.

const (
	msgChannel byte = 4

	// MaxChannelName bounds channel names.
	MaxChannelName = 32
	// maxHops bounds how far a channel message travels.
	maxHops = 64
	// channelHdrMax is the header of a channel message with a maximal name,
	// with the signature that ends it.
	channelHdrMax = 1 + 1 + 1 + MaxChannelName + 2*key.Len + 1 + key.SigLen
	// MaxChannelPayload is the largest payload one channel message carries.
	MaxChannelPayload = maxPlaintext - channelHdrMax

	// channelQueueLen bounds each channel's queue of messages waiting for
	// its handler; when full the oldest is dropped (gossip_channel_dropped).
	channelQueueLen = 1024

	channelBroadcast = 1 // flags bit 0
	channelDomain    = "weavewg channel v1"
)

// ErrUnreachable is returned by Channel.Send for a peer no route leads to.
var ErrUnreachable = errors.New("discovery: peer unreachable")

// ChannelMessage is one message of a named channel.
type ChannelMessage struct {
	Name      string
	Broadcast bool
	Src, Dst  key.Public
	Hops      uint8
	Payload   []byte
	Sig       key.Signature
}

// signedBytes is what Sig covers.
func (m *ChannelMessage) signedBytes() []byte {
	b := make([]byte, 0, 2+len(m.Name)+2*key.Len+len(m.Payload))
	var flags byte
	dst := m.Dst
	if m.Broadcast {
		flags |= channelBroadcast
		dst = key.Public{}
	}
	b = append(b, flags, byte(len(m.Name)))
	b = append(b, m.Name...)
	b = append(b, m.Src[:]...)
	b = append(b, dst[:]...)
	return append(b, m.Payload...)
}

// Sign sets m.Sig; priv must be the key of m.Src.
func (m *ChannelMessage) Sign(priv key.Private) {
	m.Sig = key.Sign(priv, channelDomain, m.signedBytes())
}

// Verify checks m.Sig against m.Src.
func (m *ChannelMessage) Verify() error {
	return key.Verify(m.Src, channelDomain, m.signedBytes(), &m.Sig)
}

// AppendChannelMessage appends m in wire form to b.
func AppendChannelMessage(b []byte, m ChannelMessage) ([]byte, error) {
	if len(m.Name) == 0 || len(m.Name) > MaxChannelName {
		return b, fmt.Errorf("discovery: channel name of %d bytes", len(m.Name))
	}
	if len(m.Payload) > MaxChannelPayload {
		return b, fmt.Errorf("discovery: channel payload of %d bytes exceeds %d", len(m.Payload), MaxChannelPayload)
	}
	var flags byte
	if m.Broadcast {
		flags |= channelBroadcast
	}
	b = append(b, msgChannel, flags, byte(len(m.Name)))
	b = append(b, m.Name...)
	b = append(b, m.Src[:]...)
	b = append(b, m.Dst[:]...)
	b = append(b, m.Hops)
	b = append(b, m.Payload...)
	return append(b, m.Sig[:]...), nil
}

// channelHopsOffset is where the hop count of a message with an n-byte
// name is.
func channelHopsOffset(n int) int { return 1 + 1 + 1 + n + 2*key.Len }

// ParseChannelMessage parses a channel message. Payload aliases b. The
// signature is not checked here.
func ParseChannelMessage(b []byte) (ChannelMessage, error) {
	var m ChannelMessage
	if len(b) < 3 || b[0] != msgChannel {
		return m, errShort
	}
	if b[1]&^channelBroadcast != 0 {
		return m, errBadFlags
	}
	m.Broadcast = b[1]&channelBroadcast != 0
	n := int(b[2])
	if n == 0 || n > MaxChannelName {
		return m, fmt.Errorf("discovery: channel name of %d bytes", n)
	}
	b = b[3:]
	if len(b) < n+2*key.Len+1+key.SigLen {
		return m, errShort
	}
	m.Name = string(b[:n])
	b = b[n:]
	copy(m.Src[:], b[:key.Len])
	copy(m.Dst[:], b[key.Len:2*key.Len])
	m.Hops = b[2*key.Len]
	b = b[2*key.Len+1:]
	m.Payload = b[:len(b)-key.SigLen]
	copy(m.Sig[:], b[len(b)-key.SigLen:])
	return m, nil
}

// Channel is one named channel of a Router.
type Channel struct {
	r       *Router
	name    string
	handler func(from key.Public, msg []byte)
	in      chan channelDelivery
}

// channelDelivery is a message for this peer, its signature not yet
// checked (the channel's goroutine does that, off the router's lock). A
// pointer: the queue's slots are allocated with it, and a message inline
// made each channel's queue 180 KB (700 KB per router; 700 MB for a
// thousand simulated peers).
type channelDelivery struct {
	m *ChannelMessage // Payload is its own copy
}

// Channel registers the named channel and returns it. handler receives every
// message addressed to this peer on it, one at a time on a goroutine of the
// channel's own (never with router locks held); msg is its own copy. Messages
// for a channel nobody registered are dropped and counted. Register before
// Start so no early message is dropped.
func (r *Router) Channel(name string, handler func(from key.Public, msg []byte)) (*Channel, error) {
	if len(name) == 0 || len(name) > MaxChannelName {
		return nil, fmt.Errorf("discovery: channel name %q: 1-%d bytes", name, MaxChannelName)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	if _, dup := r.channels[name]; dup {
		return nil, fmt.Errorf("discovery: channel %q registered twice", name)
	}
	ch := &Channel{r: r, name: name, handler: handler, in: make(chan channelDelivery, channelQueueLen)}
	r.channels[name] = ch
	r.wg.Add(1)
	go ch.deliverLoop(r.chanDone)
	return ch, nil
}

func (ch *Channel) deliverLoop(done <-chan struct{}) {
	defer ch.r.wg.Done()
	for {
		select {
		case <-done:
			return
		case d := <-ch.in:
			if err := ch.r.cfg.Verify(d.m.Src, channelDomain, d.m.signedBytes(), &d.m.Sig); err != nil {
				ch.r.ctr.inc(CtrChannelBadSig)
				ch.r.logOnce(slog.LevelWarn, "chanbadsig:"+d.m.Src.Name(), ch.name,
					"dropping a channel message whose signature does not check: a member is forging another's messages",
					"claimed_src", d.m.Src.Name(), "channel", ch.name)
				continue
			}
			ch.handler(d.m.Src, d.m.Payload)
		}
	}
}

// enqueueLocked hands a message to the channel's handler without blocking,
// dropping the oldest waiting one if the queue is full. Called with
// Router.mu held, so there is one producer at a time.
func (ch *Channel) enqueueLocked(d channelDelivery) {
	for {
		select {
		case ch.in <- d:
			return
		default:
		}
		select {
		case <-ch.in:
			ch.r.ctr.inc(CtrChannelDropped)
		default:
		}
	}
}

// Send routes msg to peer to. It returns ErrUnreachable if no route leads
// there; delivery is otherwise best effort, like all gossip.
func (ch *Channel) Send(to key.Public, msg []byte) error {
	r := ch.r
	m := ChannelMessage{Name: ch.name, Src: r.self, Dst: to, Hops: maxHops, Payload: msg}
	m.Sign(r.priv)
	b, err := AppendChannelMessage(nil, m)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.forwardLocked(to, b) {
		return fmt.Errorf("%w: %s", ErrUnreachable, to.Name())
	}
	return nil
}

// Broadcast sends msg to every reachable peer: one message to each next
// hop, listing the peers routed through it, to next hops that take
// multicast messages (multicast.go), and one per peer to others.
func (ch *Channel) Broadcast(msg []byte) { ch.multicast(nil, msg) }

// Multicast sends msg to the peers to, as Broadcast sends it to all: one
// message to each next hop, listing the peers in to routed through it.
// Where one message goes to many peers (a peer that arrives is sent the
// same own entries by each, and after a heal each peer sends the same to
// every arrival), a unicast to each crossed every hop of its path: at a
// heal of a tenth of 300 simulated peers 4.7 frames a message.
//
// It is a broadcast on the wire: the signature covers no destination, so
// a relay could deliver it to peers not in to (as it could drop it). Send
// only what could be broadcast. A peer in to with no route is skipped
// (gossip_channel_no_route), as is self.
func (ch *Channel) Multicast(to []key.Public, msg []byte) {
	if len(to) > 0 {
		ch.multicast(to, msg)
	}
}

// multicast sends msg as a broadcast to the peers to, or to every
// reachable peer if to is nil.
func (ch *Channel) multicast(to []key.Public, msg []byte) {
	r := ch.r
	m := ChannelMessage{Name: ch.name, Broadcast: true, Src: r.self, Hops: maxHops, Payload: msg}
	if len(m.Payload) > MaxChannelPayload {
		r.log.Warn("channel message not sent", "channel", ch.name, "err", fmt.Sprintf("payload of %d bytes exceeds %d", len(msg), MaxChannelPayload))
		return
	}
	m.Sign(r.priv) // once: a broadcast's signature does not cover dst
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	var dsts []key.Public
	if to == nil {
		dsts = make([]key.Public, 0, r.rt.count())
		for dst := range r.rt.others() {
			dsts = append(dsts, dst)
		}
	} else {
		dsts = make([]key.Public, 0, len(to))
		for _, k := range to {
			if k != r.self {
				dsts = append(dsts, k)
			}
		}
	}
	r.multicastLocked(&m, dsts, maxHops, false)
}

// forwardLocked queues a channel message in wire form on the connection to
// dst's next hop.
func (r *Router) forwardLocked(dst key.Public, wire []byte) bool {
	nh, ok := r.rt.nextHop(dst)
	if !ok && r.recomputePending {
		r.freshLocked() // a route that records just brought
		nh, ok = r.rt.nextHop(dst)
	}
	if !ok {
		return false
	}
	c := r.active[nh]
	if c == nil {
		return false
	}
	c.queueChannel(wire)
	r.ctr.inc(CtrChannelSent)
	return true
}

// handleChannelLocked delivers or forwards a channel message received on c.
// raw is the whole message, reused by the reader after return.
func (r *Router) handleChannelLocked(raw []byte) error {
	m, err := ParseChannelMessage(raw)
	if err != nil {
		return err
	}
	if r.isEvictedLocked(m.Src) || r.isEvictedLocked(m.Dst) {
		r.ctr.inc(CtrChannelEvicted)
		return nil
	}
	if m.Dst == r.self {
		ch := r.channels[m.Name]
		if ch == nil {
			r.ctr.inc(CtrChannelUnknown)
			return nil
		}
		r.ctr.inc(CtrChannelReceived)
		m.Payload = append([]byte(nil), m.Payload...)
		ch.enqueueLocked(channelDelivery{m: &m})
		return nil
	}
	if m.Hops <= 1 {
		r.ctr.inc(CtrChannelExpired)
		return nil
	}
	fwd := append([]byte(nil), raw...)
	fwd[channelHopsOffset(len(m.Name))]--
	if !r.forwardLocked(m.Dst, fwd) {
		r.parkLocked(m.Dst, fwd) // our routes may lag the sender's (parked.go)
	} else {
		r.ctr.inc(CtrChannelForwarded)
	}
	return nil
}

// channelsState is part of Router; kept here to keep channel code together.
type channelsState struct {
	channels map[string]*Channel
	chanDone chan struct{}
	chanStop sync.Once
}
