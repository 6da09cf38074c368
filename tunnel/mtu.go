package tunnel

import (
	"maps"
	"net/netip"
	"time"

	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/pmtu"
	"github.com/weavewg/weavewg/types/key"
)

// # MTU per peer
//
// The TUN and every container veth have the tunnel MTU (Config.MTU), which
// the daemon derives from the underlay (UnderlayMTU) unless --mtu fixes it.
// A peer behind a smaller path gets a smaller MTU on its own routes into the
// TUN (PeerMTUs; the daemon hands them to hostnet.SetRoutesWithMTU, which
// sets RTAX_MTU, and RTAX_ADVMSS for the host's own sockets), so nothing
// else changes when such a peer appears:
//
//   - a container sending a DF packet too large for the peer's route is
//     answered by the host with ICMP "fragmentation needed", which its
//     kernel takes as that destination's path MTU; a packet without DF is
//     fragmented by the host before the TUN;
//   - TCP's MSS is clamped to the route's MTU in SYNs crossing the TUN
//     (pmtu.AddMSSClamp, in hostnet's forward filter table), so new connections
//     never send a segment that would need the ICMP;
//   - the host's own sockets read the route's MTU and advmss.
//
// A peer's MTU is pmtu.Decide of the tunnel MTU, the underlay route towards
// the peer (its link, or the path MTU the kernel learnt from a router's
// ICMP) and the largest padded probe the peer answered on the path in use
// (mtuprobe.go): behind a router that drops ICMP, only the probes know.
// The path (direct or relayed) is the path owner's choice (paths.go); this
// loop only reads it, and keeps a separate search per path.
//
// The MTU loop owns everything here; the packet path hands it verified
// probe replies through Bind.mtuAnswers and never waits for it.

// mtuTick is how often the MTU loop wakes: to take replies, send the probe
// rounds that are due (pmtu.Search spaces them) and re-read the routes.
const mtuTick = 250 * time.Millisecond

// PeerMTU is a peer's overlay MTU and where it comes from.
type PeerMTU struct {
	MTU    int
	Source pmtu.Source
	Probed int // largest UDP payload the peer answered on the path in use; 0 none yet
}

// peerMTUState is the MTU loop's state of one peer.
type peerMTUState struct {
	search   [2]*pmtu.Search // by path: direct, relayed
	route    int             // underlay route MTU towards the peer; 0 unknown
	link     int             // MTU of the link that route leaves by: the largest probe
	routeAt  int64           // unix ns of the last route lookup
	cur      PeerMTU
	probeBuf []byte
}

// mtuLoop runs until t.stop closes.
func (t *Tunnel) mtuLoop() {
	defer close(t.mtuDone)
	// On the process's beat (internal/beat), and only once a second
	// while every pair is idle: then there is nothing to probe, and four
	// wakeups a second were an idle daemon's largest single timer.
	tick := beat.NewTicker(mtuTick)
	defer tick.Stop()
	state := map[PeerID]*peerMTUState{}
	var sizes []int
	for {
		select {
		case <-t.stop:
			return
		case a := <-t.bind.mtuAnswers:
			if s := state[a.peer]; s != nil && int(a.path) < len(s.search) && s.search[a.path] != nil {
				s.search[a.path].Answered(a.size, time.Unix(0, a.sent))
			}
			continue
		case <-tick.C:
		}
		tbl := t.bind.table.Load()
		if tbl == nil || t.cfg.FixedMTU {
			tick.Reset(time.Second)
			continue
		}
		now := time.Unix(0, t.bind.nowNano())
		changed := false
		active := 0
		seen := make(map[PeerID]bool, len(tbl.peers))
		for i := range tbl.peers {
			p := &tbl.peers[i]
			seen[p.id] = true
			if p.path.idle.Load() {
				continue // no probes and no route lookups for idle pairs (idle.go)
			}
			active++
			s := state[p.id]
			if s == nil {
				s = &peerMTUState{cur: PeerMTU{MTU: t.cfg.MTU, Source: pmtu.SourceLink}}
				state[p.id] = s
			}
			path := mtuPathDirect
			hopIdx := int32(i)
			if p.via >= 0 && p.path.relayed.Load() {
				path = mtuPathRelayed
				hopIdx = tbl.nextHopIndex(int32(i))
			}
			hop := tbl.peers[hopIdx].ep
			hopAddr, ok := netip.AddrPort{}, false
			if hop != nil {
				hopAddr, ok = endpointAddrPort(hop)
			}
			if !ok {
				continue
			}
			// The route towards the next hop: its link bounds the probes,
			// and a path MTU learnt from ICMP lowers the peer's MTU at once.
			if now.UnixNano()-s.routeAt >= int64(time.Second) {
				s.routeAt = now.UnixNano()
				if r, l, err := routeMTU(t.mtuNL, hopAddr.Addr().Unmap()); err == nil {
					if l != s.link {
						s.link = l
						s.search = [2]*pmtu.Search{} // a new ladder
					}
					s.route = r
				}
			}
			if s.link == 0 {
				continue
			}
			if s.search[path] == nil {
				s.search[path] = pmtu.NewSearch(pmtu.Ladder(pmtu.PayloadFor(s.link, false), false), now)
			}
			heard := p.path.lastReply.Load() // direct probes' replies
			if path == mtuPathRelayed {
				heard = p.path.lastRelay.Load()
			}
			if heard != 0 {
				s.search[path].PathHeard(time.Unix(0, heard)) // back after a silence: probe now
			}
			sizes = s.search[path].ToProbe(now, sizes[:0])
			if len(sizes) > 0 && t.raw != nil && p.pairKey != nil {
				t.sendMTUProbes(tbl, p, &tbl.peers[hopIdx], byte(path), hopAddr, sizes, now, s)
			}
			probed := s.search[path].Largest(now)
			if other := s.search[1-path]; probed == 0 && other != nil {
				// The path just changed and has no answer yet: keep what
				// the other path proved rather than jump to the link's
				// MTU, so a flap does not grow the MTU under traffic.
				probed = other.Largest(now)
			}
			if probed == 0 {
				// No fresh answer on either path (the pair was idle, so
				// nothing was probed, or the path stopped answering):
				// what the path last proved stands until a new round
				// answers; only a path never measured gets the link's.
				probed = s.search[path].LastKnown()
				if other := s.search[1-path]; probed == 0 && other != nil {
					probed = other.LastKnown()
				}
			}
			m, src := pmtu.Decide(t.cfg.MTU, s.route, false, probed)
			next := PeerMTU{MTU: m, Source: src, Probed: probed}
			if next != s.cur {
				if next.MTU != s.cur.MTU {
					changed = true
					t.log.Info("peer MTU", "peer", p.key.Name(), "mtu", next.MTU, "source", string(next.Source), "probed", next.Probed, "route", s.route)
				}
				s.cur = next
			}
		}
		for id := range state {
			if !seen[id] {
				delete(state, id)
				changed = true
			}
		}
		pub := make(map[key.Public]PeerMTU, len(tbl.peers))
		for i := range tbl.peers {
			if s := state[tbl.peers[i].id]; s != nil {
				pub[tbl.peers[i].key] = s.cur
			}
		}
		if active == 0 {
			tick.Reset(time.Second)
		} else {
			tick.Reset(mtuTick)
		}
		old := t.peerMTUs.Load()
		t.peerMTUs.Store(&pub)
		if (changed || old == nil || !maps.Equal(*old, pub)) && t.cfg.OnPeerMTU != nil {
			t.cfg.OnPeerMTU()
		}
	}
}

// sendMTUProbes sends one probe of each size to peer p on path through
// the next hop (hop, at addr).
func (t *Tunnel) sendMTUProbes(tbl *relayTable, p, hop *relayPeer, path byte, addr netip.AddrPort, sizes []int, now time.Time, s *peerMTUState) {
	if hop.hopTx == nil {
		return
	}
	hdr := RelayHeader{Type: RelayTypeMTUProbe, HopLimit: 1, Dst: p.id, Src: tbl.self}
	if path == mtuPathRelayed {
		hdr.HopLimit = DefaultHopLimit
	}
	for _, z := range sizes {
		s.probeBuf = appendMTUProbe(s.probeBuf[:0], p.pairKey, hdr, now.UnixNano(), z, path)
		sealHop(s.probeBuf, hop.hopTx, hop.path.hopSend.Add(1))
		if err := t.raw.send(s.probeBuf, addr); err != nil {
			t.bind.mtuCtr[mcSendErrors].Add(1)
			continue
		}
		t.bind.mtuCtr[mcSent].Add(1)
	}
}

// PeerMTUs returns each peer's MTU as the MTU loop last decided it (none
// before its first round, and none with FixedMTU).
func (t *Tunnel) PeerMTUs() map[key.Public]PeerMTU {
	if m := t.peerMTUs.Load(); m != nil {
		return maps.Clone(*m)
	}
	return map[key.Public]PeerMTU{}
}

// addMTUStats adds each peer's MTU to its stats.
func (t *Tunnel) addMTUStats(stats map[key.Public]PeerStats) {
	for k, s := range stats {
		switch {
		case t.cfg.FixedMTU:
			s.MTU, s.MTUSource = t.cfg.MTU, pmtu.SourceFlag
		default:
			s.MTU, s.MTUSource = t.cfg.MTU, pmtu.SourceLink
			if m := t.peerMTUs.Load(); m != nil {
				if v, ok := (*m)[k]; ok {
					s.MTU, s.MTUSource, s.MTUProbed = v.MTU, v.Source, v.Probed
				}
			}
		}
		stats[k] = s
	}
}
