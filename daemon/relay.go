package daemon

import (
	"cmp"
	"slices"

	"github.com/weavewg/weavewg/discovery"
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
