package daemon

import (
	"cmp"
	"slices"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/key"
)

// relayChoice is what the tunnel needs to relay to one peer: the peer to
// send through when the direct path is silent, and whether to start there.
type relayChoice struct {
	via     key.Public
	relayed bool
}

// relayChoices picks, for every reachable peer, the relay the tunnel falls
// back to when its probes find the direct path dead (tunnel.PeerConfig.Relay).
//
// When gossip's route to the peer goes through another peer, that first hop
// is the relay and the peer starts relayed: routes are shortest paths,
// symmetric and tie-broken the same way everywhere, so the two ends and
// every hop agree. When the route is the direct edge, the relay is a
// neighbour of both ends that we hold a control connection to (the smallest
// key, so the choice is deterministic): when the direct path dies, traffic
// can move there within a probe timeout, long before the control connection
// times out and gossip reroutes.
func relayChoices(peers []discovery.Peer) map[key.Public]relayChoice {
	out := make(map[key.Public]relayChoice, len(peers))
	var direct []*discovery.Peer // candidate relays, by key
	for i := range peers {
		p := &peers[i]
		if !p.Self && p.Reachable && p.Direct && p.Endpoint.IsValid() {
			direct = append(direct, p)
		}
	}
	slices.SortFunc(direct, func(a, b *discovery.Peer) int { return cmp.Compare(string(a.Key[:]), string(b.Key[:])) })
	for _, p := range peers {
		if p.Self || !p.Reachable || p.NextHop.IsZero() {
			continue
		}
		if p.NextHop != p.Key {
			out[p.Key] = relayChoice{via: p.NextHop, relayed: true}
			continue
		}
		for _, q := range direct {
			if q.Key != p.Key && slices.Contains(q.Neighbors, p.Key) {
				out[p.Key] = relayChoice{via: q.Key}
				break
			}
		}
	}
	return out
}

// keepalives decides, for every peer in relays' world, which side of the
// pair sends WireGuard keepalives (and so starts handshakes unasked).
//
// The side behind a NAT must: its NAT drops what the other side sends until
// it has sent first, and its mapping lasts only while it keeps sending. So
// a host that is not known to be public (STUN through other peers said so,
// nat.Behaviour.Public) keeps alive the peers it depends on whatever the
// key order: those it holds a control connection to (public peers, or
// peers on its LAN) and every relay it uses. A public host sends none: the
// other side does, and its probes and handshakes teach us its mapping.
// Between two peers that depend on neither (two NATed peers, normally
// relayed), the smaller key does, as before, so their first handshakes do
// not collide.
func keepalives(peers []discovery.Peer, relays map[key.Public]relayChoice, public bool) map[key.Public]tunnel.Keepalive {
	out := make(map[key.Public]tunnel.Keepalive, len(peers))
	dependsOn := map[key.Public]bool{}
	for _, r := range relays {
		dependsOn[r.via] = true
	}
	for _, p := range peers {
		if p.Self || !p.Reachable {
			continue
		}
		switch {
		case public:
			out[p.Key] = tunnel.KeepaliveOff
		case p.Direct || dependsOn[p.Key]:
			out[p.Key] = tunnel.KeepaliveOn
		default:
			out[p.Key] = tunnel.KeepaliveByKey
		}
	}
	return out
}

// knownPublic reports whether STUN through other peers showed this host
// to have a public address (no NAT).
func (d *Daemon) knownPublic() bool {
	return d.nat != nil && d.nat.Status().Behaviour.Public
}
