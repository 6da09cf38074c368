package tunnel

import (
	"crypto/subtle"
	"net/netip"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weavewg/weavewg/types/key"
)

// # Probes
//
// Every probeInterval the tunnel sends each peer a probe straight to its UDP
// address, and another through its relay if it has one. A probe is a relay
// frame of type 1 whose payload is the probe body; the answer is the same
// body in a frame of type 2 with the peer IDs swapped:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|      relay header (20 bytes), type 1 probe or 2 reply         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          timestamp: the prober's clock, unix ns (8)           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| path          |           reserved, zero (7 bytes)            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   MAC: keyed BLAKE2s-128 (16 bytes), see probeMAC             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// path is 0 for a probe sent straight to the peer, 1 for one sent through
// relays; the answer goes back the same way. The timestamp is echoed, so the
// prober measures the round trip with its own clock alone. The MAC is keyed
// with a key derived from the network secret, so only members can make
// probes and replies (with an empty password the key is public and the check
// is only against the member addresses, as for every relay frame).
//
// A peer whose direct probes were last answered less than pathDeadAfter ago
// is direct; otherwise, if it has a relay, it is relayed. One that has not
// been probed long enough keeps its first guess.
const (
	probeInterval = 1 * time.Second
	pathDeadAfter = 5 * time.Second

	probeBodyLen  = 32
	probeFrameLen = RelayHeaderLen + probeBodyLen

	probePathDirect  = 0
	probePathRelayed = 1
)

// probeKeyOf derives the probe MAC key from the network secret.
func probeKeyOf(s key.Secret) [32]byte {
	return blake2s.Sum256(append([]byte("weavewg relay probe v1\x00"), s[:]...))
}

// probeMAC computes the MAC of a probe frame: over the header without the
// hop limit (relays change it) and the first 16 bytes of the body.
func probeMAC(k *[32]byte, frame []byte) [16]byte {
	h, _ := blake2s.New128(k[:])
	h.Write(frame[:relayOffHopLimit])
	h.Write(frame[relayOffDst : RelayHeaderLen+16])
	var m [16]byte
	h.Sum(m[:0])
	return m
}

// appendProbe appends a probe frame.
func appendProbe(b []byte, k *[32]byte, hdr RelayHeader, ts int64, path byte) []byte {
	start := len(b)
	b = AppendRelayHeader(b, hdr)
	var body [probeBodyLen]byte
	putBeUint64(body[:8], uint64(ts))
	body[8] = path
	b = append(b, body[:]...)
	m := probeMAC(k, b[start:])
	copy(b[start+RelayHeaderLen+16:], m[:])
	return b
}

// handleProbe answers a probe or records a reply; frame is the whole frame,
// h its header (for us), from the member it came from, si the source peer.
func (b *Bind) handleProbe(rx *relayRx, frame []byte, h RelayHeader, from, si int32, src netip.AddrPort) {
	t := rx.t
	if len(frame) != probeFrameLen {
		rx.n[rcMalformed]++
		return
	}
	m := probeMAC(&b.probeKey, frame)
	if subtle.ConstantTimeCompare(m[:], frame[RelayHeaderLen+16:]) != 1 {
		rx.n[rcBadProbe]++
		return
	}
	body := frame[RelayHeaderLen:]
	path := body[8]
	switch h.Type {
	case RelayTypeProbe:
		var ep conn.Endpoint
		if path == probePathDirect {
			ep = t.peers[from].ep
		} else {
			ep = t.nextHop(si)
		}
		if ep == nil {
			rx.n[rcNoRoute]++
			return
		}
		putRelayHeader(frame, RelayHeader{Type: RelayTypeProbeReply, HopLimit: DefaultHopLimit, Dst: h.Src, Src: t.self})
		m := probeMAC(&b.probeKey, frame)
		copy(frame[RelayHeaderLen+16:], m[:])
		rb := getRelayBatch()
		rb.bufs = append(rb.bufs, frame)
		if err := b.inner.Send(rb.bufs, ep); err != nil {
			rx.n[rcSendErrors]++
		} else {
			rx.n[rcProbesAnswered]++
		}
		putRelayBatch(rb)
	case RelayTypeProbeReply:
		ts := int64(beUint64(body[:8]))
		rtt := rx.now - ts
		if rtt < 0 || rtt > int64(time.Minute) {
			rx.n[rcBadProbe]++
			return
		}
		ps := t.peers[si].path
		if path == probePathDirect {
			if from != si {
				// A "direct" reply relayed by someone else proves nothing
				// about the direct path.
				rx.n[rcBadProbe]++
				return
			}
			ps.lastReply.Store(rx.now)
			ps.rtt.Store(rtt)
		} else {
			ps.relayRTT.Store(rtt)
		}
		rx.n[rcProbeReplies]++
	}
}

// sendProbes sends every peer a direct probe and, if it has a relay, a
// relayed one. It runs on the path loop; its allocations are per probe, not
// per packet.
func (b *Bind) sendProbes() {
	t := b.table.Load()
	if t == nil {
		return
	}
	now := b.nowNano()
	var sent uint64
	for i := range t.peers {
		p := &t.peers[i]
		hdr := RelayHeader{Type: RelayTypeProbe, HopLimit: 1, Dst: p.id, Src: t.self}
		if p.ep != nil {
			f := appendProbe(make([]byte, 0, probeFrameLen), &b.probeKey, hdr, now, probePathDirect)
			if b.inner.Send([][]byte{f}, p.ep) == nil {
				sent++
			}
		}
		if p.via >= 0 {
			if ep := t.nextHop(p.via); ep != nil {
				hdr.HopLimit = DefaultHopLimit
				f := appendProbe(make([]byte, 0, probeFrameLen), &b.probeKey, hdr, now, probePathRelayed)
				if b.inner.Send([][]byte{f}, ep) == nil {
					sent++
				}
			}
		}
	}
	b.ctr.relay[rcProbesSent].Add(sent)
}

// decidePath is the path rule: whether peer p should be relayed at now.
func decidePath(p *relayPeer, now int64) bool {
	switch {
	case p.via < 0:
		return false // nothing better than the direct path
	case p.ep == nil:
		return true // no direct address
	}
	last := p.path.lastReply.Load()
	if last != 0 && now-last < int64(pathDeadAfter) {
		return false
	}
	if last == 0 && now-p.path.added < int64(pathDeadAfter) {
		return p.path.relayed.Load() // too early to tell: keep the first guess
	}
	return true
}
