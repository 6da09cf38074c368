package tunnel

import (
	"crypto/subtle"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/conn"
)

// # Probes
//
// Every probeInterval the tunnel sends each peer a probe straight to its UDP
// address, and, every relayProbeEvery (every round during a NAT opening),
// another through its relay if it has one. A probe is a relay
// frame of type 1 whose payload is the probe body; the answer is a body of
// the same layout in a frame of type 2 with the peer IDs swapped, the
// timestamp echoed and the replier's own counter:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|      relay header (36 bytes), type 1 probe or 2 reply         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          timestamp: the prober's clock, unix ns (8)           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          counter: the sender's, for this pair (8)             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| path          | flags         |    reserved, zero (6 bytes)   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   MAC: BLAKE2s-128 keyed with the pair key (16 bytes)         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Body version 2 (40 bytes); the 32-byte body of version 1, keyed by the
// network secret alone, is dropped as malformed. path is 0 for a probe sent
// straight to the peer (hop limit 1, so no relay forwards it), 1 for one sent
// through relays; the answer goes back the same way. The timestamp is
// echoed, so the prober measures the round trip with its own clock alone.
// flags bit 0 (probeFlagOpening, in probes only): it is the sender's turn to
// send first to open the pair's NATs, and its datagrams now go to our NAT
// mapping (reach.Path.Opening); the receiver, holding off, may send now.
// flags bit 1 (probeFlagNATAnswers, probes only): the receiver's NAT
// answered the sender's datagram to its mapping with ICMP port
// unreachable, so it takes unsolicited datagrams in (natanswer.go).
// flags bit 2 (probeFlagRelaying, probes only): the sender sends its
// WireGuard datagrams to the receiver through its relay (its path to the
// receiver is relayed); a kernel-datapath receiver keeps such a peer off
// its kernel device (reach.Path.PeerRelays).
// Peers that predate the flags ignore them (reserved bytes were zero).
// The MAC covers the header (without the hop limit byte, the hop counter
// and the hop MAC, which every hop rewrites) and the body before it, under
// the key of the pair (auth.go): it proves which member made the message
// end to end, through relays too, and a repeated counter is dropped. Like
// every relay frame, each hop of a probe also proves its sender (hop.go),
// which is how a probe straight from the peer, from any address, moves the
// peer's endpoint there (the endpoint "learned").
//
// The replies are the evidence the path owner (package reach, paths.go)
// decides direct or relayed by.
//
// The probes are also the keepalives of NAT mappings: every peer probes
// every peer it has an address for each second, whatever the key order, so
// a NATed peer holds open its mapping towards the public peers and relays it
// depends on, and they learn that mapping from the probes.
const (
	probeInterval = 1 * time.Second

	probeBodyLen  = 40
	probeFrameLen = RelayHeaderLen + probeBodyLen
	probeMACOff   = RelayHeaderLen + 24 // where the MAC starts in a frame

	probePathDirect  = 0
	probePathRelayed = 1

	probeFlagOpening    = 1 << 0
	probeFlagNATAnswers = 1 << 1
	probeFlagRelaying   = 1 << 2
)

// probeMAC computes the MAC of a probe frame: over the header without what
// relays change (hop limit byte, hop counter and MAC) and the body before
// the MAC.
func probeMAC(k *[32]byte, frame []byte) [16]byte {
	h, _ := blake2s.New128(k[:])
	h.Write(frame[:relayOffHopLimit])
	h.Write(frame[relayOffDst:relayOffCtr])
	h.Write(frame[RelayHeaderLen:probeMACOff])
	var m [16]byte
	h.Sum(m[:0])
	return m
}

// appendProbe appends a probe frame.
func appendProbe(b []byte, k *[32]byte, hdr RelayHeader, ts int64, ctr uint64, path, flags byte) []byte {
	start := len(b)
	b = AppendRelayHeader(b, hdr)
	var body [probeBodyLen]byte
	putBeUint64(body[:8], uint64(ts))
	putBeUint64(body[8:16], ctr)
	body[16] = path
	body[17] = flags
	b = append(b, body[:]...)
	m := probeMAC(k, b[start:])
	copy(b[start+probeMACOff:], m[:])
	return b
}

// handleProbe answers a probe or records a reply; frame is the whole frame,
// h its header (for us), si the source peer, hs the member that sent this
// hop (si, or the relay that forwarded it), src and ep the UDP address and
// endpoint it came from.
func (b *Bind) handleProbe(rx *relayRx, frame []byte, h RelayHeader, si, hs int32, src netip.AddrPort, ep conn.Endpoint) {
	t := rx.t
	p := &t.peers[si]
	if len(frame) != probeFrameLen {
		rx.n[rcMalformed]++
		return
	}
	if p.pairKey == nil {
		rx.n[rcBadMAC]++
		return
	}
	m := probeMAC(p.pairKey, frame)
	if subtle.ConstantTimeCompare(m[:], frame[probeMACOff:probeFrameLen]) != 1 {
		rx.n[rcBadMAC]++
		return
	}
	body := frame[RelayHeaderLen:]
	path := body[16]
	if !p.path.replay.accept(beUint64(body[8:16])) {
		rx.n[rcReplayed]++
		return
	}
	direct := path == probePathDirect
	switch h.Type {
	case RelayTypeProbe:
		if body[17]&probeFlagOpening != 0 {
			p.path.peerOpening.Store(rx.now) // the path loop tells reach
		}
		if body[17]&probeFlagNATAnswers != 0 {
			p.path.takesIn.Store(rx.now) // the path loop tells reach
		}
		if body[17]&probeFlagRelaying != 0 { // the path loop tells reach
			p.path.saysRelayed.Store(rx.now)
		} else {
			p.path.saysDirect.Store(rx.now)
		}
		// The answer goes back the way the probe came: straight, or to the
		// relay that forwarded it, whatever our own path to the peer. (Sent
		// along our path, a relayed probe's answer went straight while we
		// still held the peer direct: over the very path that had failed,
		// so neither side saw its relay answer.)
		hop := hs
		if ep == nil {
			rx.n[rcNoRoute]++
			return
		}
		putRelayHeader(frame, RelayHeader{Type: RelayTypeProbeReply, HopLimit: DefaultHopLimit, Dst: h.Src, Src: t.self})
		if direct {
			frame[relayOffHopLimit] = 1
		}
		putBeUint64(body[8:16], p.path.sendCtr.Add(1))
		body[17] = 0 // flags speak for the prober only
		m := probeMAC(p.pairKey, frame)
		copy(frame[probeMACOff:], m[:])
		if err := b.sendHop(t, hop, frame, ep); err != nil {
			rx.n[rcSendErrors]++
		} else {
			rx.n[rcProbesAnswered]++
		}
	case RelayTypeProbeReply:
		ts := int64(beUint64(body[:8]))
		rtt := rx.now - ts
		if rtt < 0 || rtt > int64(time.Minute) {
			rx.n[rcBadProbe]++
			return
		}
		if direct {
			p.path.lastReply.Store(rx.now)
			p.path.rtt.Store(rtt)
		} else {
			p.path.relayRTT.Store(rtt)
			// When the answered probe was sent, not when its answer came:
			// the path owner asks whether the relay answered a probe sent
			// after the last direct answer (reach.RelayReply).
			p.path.lastRelay.Store(max(p.path.lastRelay.Load(), ts))
		}
		rx.n[rcProbeReplies]++
	}
}

// sendProbes sends every peer a direct probe (unless its path holds off:
// reach's opening turns) and, if it has a relay, a relayed one. It runs on the path loop; its allocations are per probe, not
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
		if p.pairKey == nil || p.path.idle.Load() {
			continue
		}
		hdr := RelayHeader{Type: RelayTypeProbe, HopLimit: 1, Dst: p.id, Src: t.self}
		flags := b.probeFlags(p, now)
		if p.via >= 0 && p.path.relayed.Load() {
			flags |= probeFlagRelaying
		}
		if p.ep != nil && !p.path.hold.Load() {
			f := appendProbe(make([]byte, 0, probeFrameLen), p.pairKey, hdr, now, p.path.sendCtr.Add(1), probePathDirect, flags)
			if b.sendHop(t, int32(i), f, p.ep) == nil {
				sent++
			}
		}
		if p.via >= 0 && b.relayProbeDue(p, now, flags) {
			j := t.nextHopIndex(p.via)
			if ep := t.peers[j].ep; ep != nil {
				p.path.relayProbeAt.Store(now)
				hdr.HopLimit = DefaultHopLimit
				f := appendProbe(make([]byte, 0, probeFrameLen), p.pairKey, hdr, now, p.path.sendCtr.Add(1), probePathRelayed, flags)
				if b.sendHop(t, j, f, ep) == nil {
					sent++
				}
			}
		}
	}
	b.ctr.relay[rcProbesSent].Add(sent)
}

// relayProbeEvery is how often a pair is probed through its relay, unless
// its probes carry the NAT opening's words (then every round: the holder
// waits for them). Every round cost a relay four frames a second for each
// pair it relays (probe and reply, both ways): with six relayed pairs,
// most of what a relay starved of CPU had to forward in the VM test.
// Nothing needs the relayed path's answer sooner: a direct path is given
// up after DeadAfter (5 s) and only for a relay that answered since.
const relayProbeEvery = 5 * time.Second

// relayProbeDue reports whether p gets a relayed probe this round at now.
func (b *Bind) relayProbeDue(p *relayPeer, now int64, flags byte) bool {
	return flags&(probeFlagOpening|probeFlagNATAnswers) != 0 || p.path.hold.Load() ||
		now-p.path.relayProbeAt.Load() >= int64(relayProbeEvery)
}

// probeFlags are the flags of this round's probes to p at now: the opening
// word once we have probed its mapping for a probe interval in our turn
// (so that an ICMP port unreachable from its NAT has come back first), and
// whether its NAT answered so (natanswer.go).
//
// Both wait until STUN has shown this host its own NAT's address
// (SetMappedAddrs): an ICMP answer about a peer behind our own router comes
// from that router's LAN side and says nothing of its WAN side, and that
// peer is told nothing.
func (b *Bind) probeFlags(p *relayPeer, now int64) byte {
	var flags byte
	own := b.ownMapped.Load()
	if own == nil || len(*own) == 0 {
		return 0
	}
	if !p.path.opening.Load() || p.ep == nil {
		p.path.openingSince.Store(0)
	} else if since := p.path.openingSince.Load(); since == 0 {
		p.path.openingSince.Store(now)
	} else if now-since >= int64(probeInterval)/2 {
		flags |= probeFlagOpening
	}
	if at := p.path.natAnswers.Load(); at != 0 && now-at < int64(natAnswersRecent) && !slices.Contains(*own, p.addr.Addr()) {
		flags |= probeFlagNATAnswers
	}
	return flags
}
