package daemon

import (
	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/types/key"
)

// pathInput is what gossip tells the path owner (package reach, run by the
// tunnel) about one reachable peer: the relay to fall back to, whether to
// start relayed, and whether we depend on the peer to hold our NAT mapping
// open (a control neighbour, or a relay of some peer).
type pathInput struct {
	via       key.Public
	relayed   bool
	dependsOn bool
}

// pathInputs derives the path owner's input from gossip's view (the relay
// rule itself is reach.Relays).
func pathInputs(peers []discovery.Peer) map[key.Public]pathInput {
	routes := make([]reach.Route, 0, len(peers))
	for _, p := range peers {
		routes = append(routes, reach.Route{Key: p.Key, Self: p.Self, Reachable: p.Reachable, Direct: p.Direct,
			HasEndpoint: p.Endpoint.IsValid(), NextHop: p.NextHop, Neighbors: p.Neighbors})
	}
	relays := reach.Relays(routes)
	uses := map[key.Public]bool{}
	for _, r := range relays {
		uses[r.Via] = true
	}
	out := make(map[key.Public]pathInput, len(peers))
	for _, p := range peers {
		if p.Self || !p.Reachable {
			continue
		}
		r := relays[p.Key]
		out[p.Key] = pathInput{via: r.Via, relayed: r.StartRelayed, dependsOn: p.Direct || uses[p.Key]}
	}
	return out
}
