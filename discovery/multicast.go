package discovery

import (
	"encoding/binary"
	"fmt"

	"github.com/weavewg/weavewg/types/key"
)

// Multicast: a broadcast was a unicast to every reachable peer, so each of
// its N-1 copies crossed every hop of its own path: N times the mean path
// length in frames, and the sender queued N-1 messages at once on its few
// connections. At 1,000 simulated peers a channel message took 3.3 frames
// per peer it reached, and IPAM's and DNS's messages were 142 of the 178
// frames per peer of the 1,000th join (lead, fc682d6). Now a broadcast
// goes to each next hop as one message listing the destinations routed
// through it; each relay delivers its own copy and splits the rest by its
// own next hops. Routes are shortest paths every relay on them agrees on
// (topology.go), so the copies follow the sender's tree of best paths: a
// frame per peer reached, and one message per connection at the sender.
// (Where routes disagree while they change, a destination may be reached
// twice or parked, as a unicast would be: the payloads are CRDT states.)
//
// Features message (type 10), sent by each side when a connection starts:
//
//	+---------------+--------------+
//	| type = 10 (1) | features (8) |
//	+---------------+--------------+
//
//	features: bit 0 multicast (the peer takes type 11); a peer ignores
//	bits it does not know, so a later feature needs no new type.
//
// A peer that predates it ignores the message (counted as an unknown
// type) and is sent type-4 messages, one per destination, as before: only
// a peer that sent us bit 0 gets type 11 (conn.speaksMulticast).
//
// Multicast channel message (type 11):
//
//	+---------+--------+----------+---------+--------+-----------+--------------+---------+-----------+
//	| type 11 | nlen 1 | name     | src 32  | hops 1 | count 2   | count × dst  | payload | signature |
//	|         |        | (≤ 32 B) | key     |        | (≥ 1)     | key (32)     |         | 64        |
//	+---------+--------+----------+---------+--------+-----------+--------------+---------+-----------+
//
// The signature is the broadcast's (channel.go): src's, over flags =
// broadcast | nlen | name | src | 32 zero bytes | payload. It covers no
// destination, so it holds for each one, and a relay turns the message
// into type-4 broadcasts, one per destination, for a next hop that
// predates multicast or to park one it has no route to yet. The
// destinations are not signed, as a type-4 message's hop count is not: a
// relay could drop some, as it could drop the message.
const (
	msgFeatures  byte = 10
	msgMulticast byte = 11

	featuresLen = 1 + 8
	// featMulticast: the sender takes multicast channel messages.
	featMulticast uint64 = 1
	// ourFeatures is what this version sends.
	ourFeatures = featMulticast

	// multicastFixed is a multicast message's size less its name,
	// destinations and payload.
	multicastFixed = 1 + 1 + key.Len + 1 + 2 + key.SigLen
)

// appendFeatures appends a features message.
func appendFeatures(b []byte, features uint64) []byte {
	b = append(b, msgFeatures)
	return binary.BigEndian.AppendUint64(b, features)
}

// parseFeatures parses a whole features message.
func parseFeatures(b []byte) (uint64, error) {
	switch {
	case len(b) < featuresLen:
		return 0, errShort
	case len(b) > featuresLen:
		return 0, errTrailing
	case b[0] != msgFeatures:
		return 0, errBadType
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}

// handleFeaturesLocked notes what c's peer takes.
func (r *Router) handleFeaturesLocked(c *conn, m []byte) error {
	f, err := parseFeatures(m)
	if err != nil {
		return err
	}
	c.speaksMulticast = f&featMulticast != 0
	return nil
}

// multicastMax is how many destinations fit one multicast message with a
// name of nlen bytes and a payload of plen.
func multicastMax(nlen, plen int) int {
	return max(0, min((maxPlaintext-multicastFixed-nlen-plen)/key.Len, 1<<16-1))
}

// AppendMulticast appends a multicast message to b: m's name, source,
// payload and broadcast signature, with hops and the destinations dsts.
func AppendMulticast(b []byte, m *ChannelMessage, hops uint8, dsts []key.Public) ([]byte, error) {
	if len(m.Name) == 0 || len(m.Name) > MaxChannelName {
		return b, fmt.Errorf("discovery: channel name of %d bytes", len(m.Name))
	}
	if len(dsts) == 0 || len(dsts) > multicastMax(len(m.Name), len(m.Payload)) {
		return b, fmt.Errorf("discovery: %d destinations with a payload of %d bytes do not fit a multicast message", len(dsts), len(m.Payload))
	}
	b = append(b, msgMulticast, byte(len(m.Name)))
	b = append(b, m.Name...)
	b = append(b, m.Src[:]...)
	b = append(b, hops)
	b = binary.BigEndian.AppendUint16(b, uint16(len(dsts)))
	for _, d := range dsts {
		b = append(b, d[:]...)
	}
	b = append(b, m.Payload...)
	return append(b, m.Sig[:]...), nil
}

// ParseMulticast parses a multicast message into a broadcast
// ChannelMessage (Dst unset) and its destinations. Payload aliases b; the
// signature is not checked here.
func ParseMulticast(b []byte) (ChannelMessage, []key.Public, error) {
	var m ChannelMessage
	if len(b) < 2 || b[0] != msgMulticast {
		return m, nil, errShort
	}
	n := int(b[1])
	if n == 0 || n > MaxChannelName {
		return m, nil, fmt.Errorf("discovery: channel name of %d bytes", n)
	}
	b = b[2:]
	if len(b) < n+key.Len+1+2+key.SigLen {
		return m, nil, errShort
	}
	m.Name = string(b[:n])
	b = b[n:]
	copy(m.Src[:], b[:key.Len])
	m.Hops = b[key.Len]
	count := int(binary.BigEndian.Uint16(b[key.Len+1:]))
	b = b[key.Len+1+2:]
	if count == 0 {
		return m, nil, errShort
	}
	if len(b) < count*key.Len+key.SigLen {
		return m, nil, errShort
	}
	dsts := make([]key.Public, count)
	for i := range dsts {
		copy(dsts[i][:], b[i*key.Len:])
	}
	b = b[count*key.Len:]
	m.Broadcast = true
	m.Payload = b[:len(b)-key.SigLen]
	copy(m.Sig[:], b[len(b)-key.SigLen:])
	return m, dsts, nil
}

// multicastLocked queues m (a broadcast: name, source, payload and
// signature) to the peers dsts, hops being the hop count the copies
// leave with: one message per next hop that takes multicast (more if
// the destinations do not fit one), a type-4 message per destination to
// a next hop that does not. A destination we have no route to is parked
// when we relay (relay: our routes may lag the sender's, parked.go) and
// dropped when we send. It returns how many messages it queued.
func (r *Router) multicastLocked(m *ChannelMessage, dsts []key.Public, hops uint8, relay bool) int {
	type hop struct {
		c    *conn
		dsts []key.Public
	}
	var hopsOut []hop
	at := map[*conn]int{}
	queued := 0
	single := func(dst key.Public) []byte {
		one := *m
		one.Dst, one.Hops, one.Broadcast = dst, hops, true
		b, err := AppendChannelMessage(nil, one)
		if err != nil {
			return nil
		}
		return b
	}
	for _, dst := range dsts {
		nh, ok := r.rt.nextHop(dst)
		if !ok && r.recomputePending {
			// A route that records just brought, as forwardLocked
			// finds one: only then, or every relayed broadcast would
			// recompute the routes a flood's records gather for.
			r.freshLocked()
			nh, ok = r.rt.nextHop(dst)
		}
		var c *conn
		if ok {
			c = r.active[nh]
		}
		if c == nil {
			if !relay {
				r.ctr.inc(CtrChannelNoRoute) // routes just changed under it
			} else if b := single(dst); b != nil {
				r.parkLocked(dst, b)
			}
			continue
		}
		i, ok := at[c]
		if !ok {
			i = len(hopsOut)
			at[c] = i
			hopsOut = append(hopsOut, hop{c: c})
		}
		hopsOut[i].dsts = append(hopsOut[i].dsts, dst)
	}
	most := multicastMax(len(m.Name), len(m.Payload))
	for _, h := range hopsOut {
		if !h.c.speaksMulticast || most < 2 || len(h.dsts) == 1 {
			for _, dst := range h.dsts {
				if b := single(dst); b != nil {
					h.c.queueChannel(b)
					queued++
				}
			}
			continue
		}
		for rest := h.dsts; len(rest) > 0; {
			part := rest[:min(len(rest), most)]
			rest = rest[len(part):]
			b, err := AppendMulticast(nil, m, hops, part)
			if err != nil {
				r.log.Warn("channel message not sent", "channel", m.Name, "err", err)
				break
			}
			h.c.queueChannel(b)
			queued++
		}
	}
	r.ctr.add(CtrChannelSent, uint64(queued))
	return queued
}

// handleMulticastLocked delivers a multicast message received on c if it
// lists us, and sends the rest of its destinations on towards theirs.
func (r *Router) handleMulticastLocked(raw []byte) error {
	m, dsts, err := ParseMulticast(raw)
	if err != nil {
		return err
	}
	if r.isEvictedLocked(m.Src) {
		r.ctr.inc(CtrChannelEvicted)
		return nil
	}
	rest := dsts[:0]
	for _, d := range dsts {
		switch {
		case d == r.self:
			r.deliverLocked(m)
		case r.isEvictedLocked(d):
			r.ctr.inc(CtrChannelEvicted)
		default:
			rest = append(rest, d)
		}
	}
	if len(rest) == 0 {
		return nil
	}
	if m.Hops <= 1 {
		r.ctr.add(CtrChannelExpired, uint64(len(rest)))
		return nil
	}
	// m.Payload aliases raw, the reader's buffer: every copy queued or
	// parked is encoded anew.
	n := r.multicastLocked(&m, rest, m.Hops-1, true)
	r.ctr.add(CtrChannelForwarded, uint64(n))
	return nil
}

// deliverLocked hands m, addressed to us (a broadcast copy), to its
// channel's handler. m.Payload is copied.
func (r *Router) deliverLocked(m ChannelMessage) {
	ch := r.channels[m.Name]
	if ch == nil {
		r.ctr.inc(CtrChannelUnknown)
		return
	}
	r.ctr.inc(CtrChannelReceived)
	m.Dst = r.self
	m.Payload = append([]byte(nil), m.Payload...)
	ch.enqueueLocked(channelDelivery{m: &m})
}
