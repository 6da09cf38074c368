package tunnel

import (
	"crypto/subtle"
	"encoding/binary"
	"net/netip"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/conn"
)

// # Path MTU probes
//
// A path MTU probe is a relay frame of type 3 padded with zeros to the UDP
// payload size it tests; the answer is a frame of type 4 without padding
// (the way back may be narrower), naming the size that arrived:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   relay header (36 bytes), type 3 MTU probe or 4 MTU reply    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          timestamp: the prober's clock, unix ns (8)           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| size: the probe's UDP payload (2) | path (1)  | zero (5) ...
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   MAC (16 bytes): BLAKE2s-256 of the pair key, the header     |
//	|   without the hop fields and the 16 body bytes above, cut     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| probe only: zero padding up to size bytes in all              |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// path is 0 for a probe sent straight to the peer, 1 for one sent through
// its relay; the answer goes back the same way. A probe whose length is not
// its size field is dropped (a router or relay that truncated it proves
// nothing). The MAC is keyed with the pair's probe key (auth.go), so only
// the two peers can make and answer their probes; it covers a different
// body layout from a path probe's (probe.go) and the type field, so one
// never verifies as the other.
//
// Probes leave through a raw socket with DF set (mtu_linux.go): the shared
// UDP socket would fragment a datagram larger than the path MTU the kernel
// knows, and a fragmented probe that arrives proves nothing.
const (
	mtuBodyLen     = 32
	mtuReplyLen    = RelayHeaderLen + mtuBodyLen
	mtuOffSize     = RelayHeaderLen + 8
	mtuOffPath     = RelayHeaderLen + 10
	mtuOffMAC      = RelayHeaderLen + 16
	mtuPathDirect  = 0
	mtuPathRelayed = 1
)

// mtuMAC is BLAKE2s-256(key ‖ header without what every hop rewrites (hop
// limit byte, hop counter and MAC) ‖ the first 16 body bytes), truncated
// to 16 bytes: a prefix MAC, sound for BLAKE2 (no length extension),
// computed in a stack buffer so that answering a probe does not allocate
// (blake2s.New128 would, per call).
func mtuMAC(k *[32]byte, frame []byte) [16]byte {
	var in [32 + relayOffHopLimit + relayOffCtr - relayOffDst + mtuOffMAC - RelayHeaderLen]byte
	n := copy(in[:], k[:])
	n += copy(in[n:], frame[:relayOffHopLimit])
	n += copy(in[n:], frame[relayOffDst:relayOffCtr])
	copy(in[n:], frame[RelayHeaderLen:mtuOffMAC])
	sum := blake2s.Sum256(in[:])
	var m [16]byte
	copy(m[:], sum[:16])
	return m
}

// appendMTUProbe appends a probe of size bytes (at least mtuReplyLen).
func appendMTUProbe(b []byte, k *[32]byte, hdr RelayHeader, ts int64, size int, path byte) []byte {
	start := len(b)
	b = AppendRelayHeader(b, hdr)
	var body [mtuBodyLen]byte
	putBeUint64(body[:8], uint64(ts))
	binary.BigEndian.PutUint16(body[8:10], uint16(size))
	body[10] = path
	b = append(b, body[:]...)
	m := mtuMAC(k, b[start:])
	copy(b[start+mtuOffMAC:], m[:])
	for len(b)-start < size {
		b = append(b, 0)
	}
	return b
}

// mtuAnswer is a verified reply, handed from the packet path to the MTU
// loop through a bounded channel.
type mtuAnswer struct {
	peer PeerID
	path byte
	size int
	sent int64 // unix ns the answered probe was sent (its echoed timestamp)
}

// handleMTUProbe answers an MTU probe or passes on a reply; frame is the
// whole frame (for us) from src (ep: its endpoint), si the source peer, hs
// the member that sent this hop (si, or the relay that forwarded it).
func (b *Bind) handleMTUProbe(rx *relayRx, frame []byte, h RelayHeader, si, hs int32, src netip.AddrPort, ep conn.Endpoint) {
	t := rx.t
	p := &t.peers[si]
	if len(frame) < mtuReplyLen {
		rx.n[rcMalformed]++
		return
	}
	if p.pairKey == nil {
		rx.n[rcBadMAC]++
		return
	}
	m := mtuMAC(p.pairKey, frame)
	if subtle.ConstantTimeCompare(m[:], frame[mtuOffMAC:mtuReplyLen]) != 1 {
		rx.n[rcBadMAC]++
		return
	}
	size := int(binary.BigEndian.Uint16(frame[mtuOffSize:]))
	path := frame[mtuOffPath]
	switch h.Type {
	case RelayTypeMTUProbe:
		if size != len(frame) {
			rx.n[rcMalformed]++
			return
		}
		hop := hs // back the way it came (as probes: handleProbe)
		if ep == nil {
			rx.n[rcNoRoute]++
			return
		}
		reply := frame[:mtuReplyLen]
		putRelayHeader(reply, RelayHeader{Type: RelayTypeMTUReply, HopLimit: DefaultHopLimit, Dst: h.Src, Src: t.self})
		m := mtuMAC(p.pairKey, reply)
		copy(reply[mtuOffMAC:], m[:])
		if err := b.sendHop(t, hop, reply, ep); err != nil {
			rx.n[rcSendErrors]++
		} else {
			b.mtuCtr[mcAnswered].Add(1)
		}
	case RelayTypeMTUReply:
		ts := int64(beUint64(frame[RelayHeaderLen:]))
		if len(frame) != mtuReplyLen || rx.now-ts < 0 || rx.now-ts > int64(time.Minute) {
			rx.n[rcBadProbe]++
			return
		}
		if path == mtuPathDirect && src != p.addr {
			rx.n[rcBadProbe]++ // a "direct" answer from elsewhere than we sent to
			return
		}
		select {
		case b.mtuAnswers <- mtuAnswer{peer: h.Src, path: path, size: size, sent: ts}:
			b.mtuCtr[mcReplies].Add(1)
		default:
			b.mtuCtr[mcRepliesDropped].Add(1)
		}
	}
}

// forwardMTUProbe sends a relayed MTU probe on towards next on its own.
// Frames forwarded together leave as one UDP GSO send, and the kernel sets
// DF only on a datagram no larger than the path MTU it knows, which a GSO
// super-packet never is: its segments go out without DF and a smaller hop
// fragments them, so a probe in such a batch would cross whatever its size.
// Alone it leaves as one datagram with DF, as the prober's own did.
func (b *Bind) forwardMTUProbe(rx *relayRx, pkt []byte, next conn.Endpoint) {
	rb := getRelayBatch()
	rb.bufs = append(rb.bufs, pkt)
	if err := b.inner.Send(rb.bufs, next); err != nil {
		rx.n[rcSendErrors]++
	} else {
		rx.n[rcForwarded]++
		rx.n[rcForwardedBytes] += uint64(len(pkt))
	}
	putRelayBatch(rb)
}

// mtuCounter indexes the path MTU counters.
type mtuCounter int

const (
	mcSent           mtuCounter = iota // probes sent
	mcSendErrors                       // probes the raw socket refused (larger than the link, no route)
	mcAnswered                         // probes of peers answered
	mcReplies                          // valid replies to our probes
	mcRepliesDropped                   // replies dropped: the MTU loop was behind
	numMTUCounters
)

var mtuCounterNames = [numMTUCounters]string{
	mcSent:           "udp_mtu_probes_sent",
	mcSendErrors:     "udp_mtu_probe_send_errors",
	mcAnswered:       "udp_mtu_probes_answered",
	mcReplies:        "udp_mtu_probe_replies",
	mcRepliesDropped: "udp_mtu_probe_replies_dropped",
}

// endpointAddrPort is the UDP address of an inner Bind endpoint.
func endpointAddrPort(ep conn.Endpoint) (netip.AddrPort, bool) {
	if e, ok := ep.(*conn.StdNetEndpoint); ok {
		return e.AddrPort, true
	}
	a, err := netip.ParseAddrPort(ep.DstToString())
	return a, err == nil
}
