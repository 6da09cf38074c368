package tunnel

import (
	"bytes"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/types/key"
)

// How each peer is reached is decided by one reach.Machine (package reach
// says how and why), which the Tunnel owns under mu and feeds:
//
//   - SetPeers: gossip's address, the advertised reflexive address, relay
//     and first guess per peer, and the address ICE selected
//     (PeerConfig.ICE), when it changes;
//   - the path loop, every probeInterval: the last direct probe reply of
//     each peer, then Tick;
//   - the path loop, when the packet path learned a peer's address from its
//     authenticated probes (pathState.learned, a mailbox): Learned.
//
// Whenever a decision changes, the Tunnel carries it out: a new relay table
// for the Bind (each peer's address and relayed flag), wireguard-go's
// endpoints and keepalives, a snapshot for PeerStats and Paths, and the
// path observer (NAT traversal) is told.

// PathObserver is told every peer's path whenever one changes. It is called
// with the Tunnel's lock held: it must not block or call the Tunnel.
type PathObserver func(map[key.Public]reach.Path)

// SetPathObserver sets (or, with nil, clears) the path observer and tells it
// the paths at once.
func (t *Tunnel) SetPathObserver(o PathObserver) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.observer = o
	if o != nil {
		o(t.reach.Paths())
	}
}

// SetPublic tells the path owner whether this host is known to have a public
// address (no NAT), which decides who sends keepalives (reach.KeepaliveFor).
func (t *Tunnel) SetPublic(public bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || public == t.public {
		return
	}
	t.public = public
	t.reach.SetPublic(public)
	t.decideLocked("this host's NAT as observed changed")
}

// Paths is every peer's path as last decided.
func (t *Tunnel) Paths() map[key.Public]reach.Path {
	if p := t.snap.Load(); p != nil {
		return *p
	}
	return nil
}

func (t *Tunnel) now() time.Time { return time.Unix(0, t.bind.nowNano()) }

// feedPeersLocked gives the path owner what SetPeers was told.
func (t *Tunnel) feedPeersLocked(peers []PeerConfig) {
	now := t.now()
	in := make([]reach.Peer, 0, len(peers))
	ice := make(map[key.Public]netip.AddrPort, len(peers))
	for _, pc := range peers {
		in = append(in, reach.Peer{Key: pc.Key, Gossip: pc.Endpoint, Reflexive: pc.Reflexive, Via: pc.Relay, StartRelayed: pc.Relayed, DependsOn: pc.DependsOn})
		if pc.ICE.IsValid() {
			ice[pc.Key] = pc.ICE
		}
	}
	// SetPeers decides again: its moves are logged as the path loop's are
	// (a new gossip address can move an endpoint), with ICE's below.
	changed := t.reach.SetPeers(now, in)
	for _, pc := range peers {
		switch old, now2 := t.ice[pc.Key], ice[pc.Key]; {
		case now2 == old:
		case now2.IsValid():
			t.reach.ICE(now, pc.Key, now2)
		default:
			t.reach.ICELost(pc.Key)
		}
	}
	t.ice = ice
	changed = append(changed, t.reach.Tick(now)...)
	slices.SortFunc(changed, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	t.logPathChangesLocked(slices.Compact(changed))
}

// updateRelayTableLocked builds the Bind's relay table from t.peers and the
// paths decided, swaps it in, and publishes the paths.
func (t *Tunnel) updateRelayTableLocked() {
	paths := t.reach.Paths()
	tbl := buildRelayTable(PeerIDOf(t.self), t.peers, t.paths, paths, t.keys.get, t.bind.inner.ParseEndpoint, t.bind.nowNano())
	t.bind.setRelayTable(tbl)
	t.countRelayed(tbl)
	keep := make(map[key.Public]bool, len(tbl.peers))
	for i := range tbl.peers {
		keep[tbl.peers[i].key] = true
	}
	t.keys.forget(keep)
	t.snap.Store(&paths)
	if t.observer != nil {
		t.observer(paths)
	}
}

// buildRelayTable makes a relay table of peers with the paths decided for
// them. Peers keep their pathState in states (which it updates: new peers
// added, departed ones removed). A peer's address is its path's endpoint;
// datagrams from its gossip address are a member's too. pairKey gives the
// probe key of a peer; parse makes the inner Bind's endpoint of an address.
func buildRelayTable(self PeerID, peers []PeerConfig, states map[key.Public]*pathState, paths map[key.Public]reach.Path, pairKey func(key.Public) *[32]byte, parse func(string) (conn.Endpoint, error), now int64) *relayTable {
	tbl := &relayTable{
		self:   self,
		byID:   make(map[PeerID]int32, len(peers)),
		byAddr: make(map[netip.AddrPort]int32, len(peers)),
	}
	relayOf := make([]key.Public, 0, len(peers))
	seen := make(map[key.Public]bool, len(peers))
	for _, pc := range peers {
		if pc.Key.IsZero() || seen[pc.Key] || PeerIDOf(pc.Key) == self {
			continue
		}
		seen[pc.Key] = true
		ps := states[pc.Key]
		if ps == nil {
			ps = newPathState(now)
			states[pc.Key] = ps
		}
		path := paths[pc.Key]
		ps.relayed.Store(path.Relayed && !pc.Relay.IsZero())
		ps.idle.Store(path.Idle)
		ps.hold.Store(path.Hold)
		ps.opening.Store(path.Opening)
		gossip := netip.AddrPortFrom(pc.Endpoint.Addr().Unmap(), pc.Endpoint.Port())
		p := relayPeer{key: pc.Key, id: PeerIDOf(pc.Key), via: -1, path: ps, addr: path.Endpoint, pairKey: pairKey(pc.Key)}
		p.hopTx, p.hopRx = hopKeyOf(p.pairKey, self), hopKeyOf(p.pairKey, p.id)
		p.relayEP = newRelayEndpoint(p.id)
		if p.addr.IsValid() {
			if ep, err := parse(p.addr.String()); err == nil {
				p.ep = ep
			}
		}
		i := int32(len(tbl.peers))
		tbl.peers = append(tbl.peers, p)
		relayOf = append(relayOf, pc.Relay)
		tbl.byID[p.id] = i
		for _, a := range []netip.AddrPort{gossip, p.addr} {
			if a.IsValid() {
				tbl.byAddr[a] = i
			}
		}
	}
	for i, r := range relayOf {
		if r.IsZero() || r == tbl.peers[i].key {
			continue
		}
		if j, ok := tbl.byID[PeerIDOf(r)]; ok {
			tbl.peers[i].via = j
		}
	}
	for k := range states {
		if !seen[k] {
			delete(states, k)
		}
	}
	return tbl
}

func (t *Tunnel) countRelayed(tbl *relayTable) {
	var n int32
	for i := range tbl.peers {
		if tbl.peers[i].via >= 0 && tbl.peers[i].path.relayed.Load() {
			n++
		}
	}
	t.bind.relayedN.Store(n)
}

// setPathsLocked gives, in want, each peer the endpoint (or relay endpoint)
// and the keepalive of its path.
func (t *Tunnel) setPathsLocked(want map[key.Public]peerState) {
	tbl := t.bind.table.Load()
	if tbl == nil {
		return
	}
	paths := t.reach.Paths()
	for i := range tbl.peers {
		p := &tbl.peers[i]
		s, ok := want[p.key]
		if !ok {
			continue
		}
		if p.via >= 0 && p.path.relayed.Load() {
			s.relay = p.relayEP.str
		} else if p.addr.IsValid() {
			s.endpoint = p.addr
		}
		s.keep = paths[p.key].Keepalive
		want[p.key] = s
	}
}

// pathLoop probes every peer each probeInterval and has the path owner
// decide again; it wakes early when the packet path learned an endpoint.
func (t *Tunnel) pathLoop() {
	defer close(t.done)
	tick := beat.NewTicker(probeInterval) // with the daemon's other loops
	defer tick.Stop()
	t.bind.coarse.Store(t.bind.nowNano())
	for {
		select {
		case <-t.stop:
			return
		case <-t.bind.learned:
			t.feedTraffic()
			continue
		case <-t.bind.woke:
			// An idle pair carried data: decide it again and probe it now.
			t.feedProbes()
			t.bind.sendProbes()
			continue
		case <-tick.C:
		}
		t.bind.coarse.Store(t.bind.nowNano())
		t.bind.sendProbes()
		t.feedProbes()
		t.bind.retransmitHandshakes() // handshake.go
	}
}

// feedTraffic gives the path owner the addresses the packet path learned
// from authenticated probes.
func (t *Tunnel) feedTraffic() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	tbl := t.bind.table.Load()
	if tbl == nil {
		return
	}
	now := t.now()
	for i := range tbl.peers {
		p := &tbl.peers[i]
		if a := p.path.learned.Swap(nil); a != nil {
			t.reach.Learned(now, p.key, *a)
		}
	}
	t.decideLocked("")
}

// feedProbes gives the path owner the last direct probe reply and the last
// data of each peer.
func (t *Tunnel) feedProbes() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if tbl := t.bind.table.Load(); tbl != nil {
		for i := range tbl.peers {
			p := &tbl.peers[i]
			if last := p.path.lastReply.Load(); last != 0 {
				t.reach.DirectReply(time.Unix(0, last), p.key)
			}
			if last := p.path.lastRelay.Load(); last != 0 {
				t.reach.RelayReply(time.Unix(0, last), p.key)
			}
			if last := p.path.lastActive.Load(); last != 0 {
				t.reach.Active(time.Unix(0, last), p.key)
			}
			if last := p.path.peerOpening.Load(); last != 0 {
				t.reach.PeerOpening(time.Unix(0, last), p.key)
			}
			if last := p.path.takesIn.Load(); last != 0 {
				t.reach.NATTakesIn(time.Unix(0, last), p.key)
			}
			if last := p.path.saysRelayed.Load(); last != 0 {
				t.reach.PeerSays(time.Unix(0, last), p.key, true)
			}
			if last := p.path.saysDirect.Load(); last != 0 {
				t.reach.PeerSays(time.Unix(0, last), p.key, false)
			}
		}
	}
	t.decideLocked("")
}

// decideLocked has the path owner decide at now and carries out what
// changed.
func (t *Tunnel) decideLocked(cause string) {
	changed := t.reach.Tick(t.now())
	if len(changed) == 0 {
		return
	}
	t.logPathChangesLocked(changed)
	if cause != "" {
		t.log.Info("paths decided again", "cause", cause, "changed", len(changed))
	}
	t.updateRelayTableLocked()
	if err := t.applyLocked(); err != nil {
		t.log.Error("carrying out the paths decided", "err", err)
	}
	// A handshake lost on the old path goes again on the new one.
	t.bind.retransmitHandshakes()
}

// logPathChangesLocked logs the moves among the paths of changed since
// they were last published (t.snap).
func (t *Tunnel) logPathChangesLocked(changed []key.Public) {
	old := t.Paths()
	for _, k := range changed {
		p, _ := t.reach.Path(k)
		was, ok := old[k]
		switch {
		case !ok:
		case p.Relayed && !was.Relayed:
			t.log.Info("relaying to peer", "peer", k.Name(), "via", p.Via.Name(), "why", p.Why)
		case !p.Relayed && was.Relayed:
			t.log.Info("sending to peer direct", "peer", k.Name(), "endpoint", p.Endpoint.String(), "from", p.From.String(), "why", p.Why)
		case p.Endpoint != was.Endpoint:
			t.log.Info("peer's endpoint moved", "peer", k.Name(), "endpoint", p.Endpoint.String(), "from", p.From.String())
		}
	}
}

// addPathStats adds the path choice and probe figures to wireguard-go's.
func (t *Tunnel) addPathStats(stats map[key.Public]PeerStats) {
	tbl := t.bind.table.Load()
	if tbl == nil {
		return
	}
	paths := t.Paths()
	for i := range tbl.peers {
		p := &tbl.peers[i]
		s, ok := stats[p.key]
		if !ok {
			continue
		}
		path := paths[p.key]
		s.Why, s.From, s.PeerRelays = path.Why, path.From, path.PeerRelays
		if s.Relayed {
			s.Endpoint = netip.AddrPort{}
			if p.via >= 0 {
				s.Via = tbl.peers[p.via].key
			}
			s.RTT = time.Duration(p.path.relayRTT.Load())
		} else {
			s.RTT = time.Duration(p.path.rtt.Load())
		}
		stats[p.key] = s
	}
}
