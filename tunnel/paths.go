package tunnel

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weavewg/weavewg/types/key"
)

// updateRelayTableLocked builds the Bind's relay table from t.peers and
// swaps it in.
func (t *Tunnel) updateRelayTableLocked() {
	tbl := buildRelayTable(PeerIDOf(t.cfg.Private.Public()), t.peers, t.paths, t.keys.get, t.bind.inner.ParseEndpoint, t.bind.nowNano())
	t.bind.setRelayTable(tbl)
	t.countRelayed(tbl)
	keep := make(map[key.Public]bool, len(tbl.peers))
	for i := range tbl.peers {
		keep[tbl.peers[i].key] = true
	}
	t.keys.forget(keep)
}

// buildRelayTable makes a relay table of peers. Peers keep their pathState
// in paths (which it updates: new peers added, departed ones removed); a new
// one starts on the first guess of its PeerConfig. A peer's address is the
// one learned from its authenticated probes, if any, else its configured
// Endpoint; a new configured Endpoint forgets the learned one. pairKey gives
// the probe key of a peer; parse makes the inner Bind's endpoint of an
// address.
func buildRelayTable(self PeerID, peers []PeerConfig, paths map[key.Public]*pathState, pairKey func(key.Public) *[32]byte, parse func(string) (conn.Endpoint, error), now int64) *relayTable {
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
		ps := paths[pc.Key]
		if ps == nil {
			ps = newPathState(now)
			ps.relayed.Store(pc.Relayed && !pc.Relay.IsZero())
			paths[pc.Key] = ps
		}
		configured := netip.AddrPortFrom(pc.Endpoint.Addr().Unmap(), pc.Endpoint.Port())
		if ps.configured != configured {
			ps.configured = configured
			ps.learned.Store(nil)
		}
		p := relayPeer{key: pc.Key, id: PeerIDOf(pc.Key), via: -1, path: ps, addr: configured, pairKey: pairKey(pc.Key)}
		p.relayEP = newRelayEndpoint(p.id)
		if l := ps.learned.Load(); l != nil {
			p.addr = *l
		}
		if p.addr.IsValid() {
			if ep, err := parse(p.addr.String()); err == nil {
				p.ep = ep
			}
		}
		i := int32(len(tbl.peers))
		tbl.peers = append(tbl.peers, p)
		relayOf = append(relayOf, pc.Relay)
		tbl.byID[p.id] = i
		for _, a := range []netip.AddrPort{configured, p.addr} {
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
	for k := range paths {
		if !seen[k] {
			delete(paths, k)
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

// setRelayEndpoints marks, in want, the peers to reach through relays, and
// gives the others the address learned from their probes, if any.
func (t *Tunnel) setRelayEndpoints(want map[key.Public]peerState) {
	tbl := t.bind.table.Load()
	if tbl == nil {
		return
	}
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
		want[p.key] = s
	}
}

// pathLoop probes every peer each probeInterval and moves peers between
// direct and relayed as the probes say. It owns the path choice: it is the
// only writer of pathState.relayed after a peer's first guess.
func (t *Tunnel) pathLoop() {
	defer close(t.done)
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-t.bind.learned:
			t.relearn()
			continue
		case <-tick.C:
		}
		t.bind.sendProbes()
		t.decidePaths()
	}
}

// relearn rebuilds the relay table and wireguard-go's endpoints after the
// packet path learned a peer's address from its authenticated probes.
func (t *Tunnel) relearn() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.updateRelayTableLocked()
	if err := t.applyLocked(); err != nil {
		t.log.Error("moving peers to the endpoints their probes came from", "err", err)
	}
}

// decidePaths applies the path rule to every peer and, if any changed,
// reconfigures wireguard-go's endpoints.
func (t *Tunnel) decidePaths() {
	tbl := t.bind.table.Load()
	if tbl == nil {
		return
	}
	now := t.bind.nowNano()
	changed := false
	for i := range tbl.peers {
		p := &tbl.peers[i]
		r := decidePath(p, now)
		if p.path.relayed.Load() == r {
			continue
		}
		p.path.relayed.Store(r)
		changed = true
		if r {
			t.log.Info("peer's direct path is silent; relaying", "peer", p.key.Name(), "via", tbl.peers[p.via].key.Name())
		} else {
			t.log.Info("peer's direct path answers; sending direct", "peer", p.key.Name(), "endpoint", p.addr.String())
		}
	}
	if !changed {
		return
	}
	t.countRelayed(tbl)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if err := t.applyLocked(); err != nil {
		t.log.Error("moving peers between direct and relayed paths", "err", err)
	}
}

// addPathStats adds the path choice and probe figures to wireguard-go's.
func (t *Tunnel) addPathStats(stats map[key.Public]PeerStats) {
	tbl := t.bind.table.Load()
	if tbl == nil {
		return
	}
	for i := range tbl.peers {
		p := &tbl.peers[i]
		s, ok := stats[p.key]
		if !ok {
			continue
		}
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
