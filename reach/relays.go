package reach

import (
	"cmp"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Route is gossip's view of one peer, as Relays needs it.
type Route struct {
	Key         key.Public
	Self        bool
	Reachable   bool
	Direct      bool         // we hold a control connection to it
	HasEndpoint bool         // gossip knows its UDP address
	NextHop     key.Public   // first hop of gossip's route to it; zero: none
	Neighbors   []key.Public // the peers it holds control connections to
}

// Relay is the relay chosen for one peer.
type Relay struct {
	Via          key.Public
	StartRelayed bool // gossip's route already goes through Via
}

// Relays picks, for every reachable peer, the relay to fall back to when
// its direct probes go unanswered.
//
// When gossip's route to the peer goes through another peer, that first hop
// is the relay and the peer starts relayed: routes are shortest paths,
// symmetric and tie-broken the same way everywhere, so the two ends and
// every hop agree. When the route is the direct edge, the relay is a
// neighbour of both ends that we hold a control connection to (the smallest
// key, so the choice is deterministic): when the direct path dies, traffic
// can move there within DeadAfter, long before the control connection
// times out and gossip reroutes.
func Relays(routes []Route) map[key.Public]Relay {
	out := make(map[key.Public]Relay, len(routes))
	var direct []*Route // candidate relays, by key
	for i := range routes {
		r := &routes[i]
		if !r.Self && r.Reachable && r.Direct && r.HasEndpoint {
			direct = append(direct, r)
		}
	}
	slices.SortFunc(direct, func(a, b *Route) int { return cmp.Compare(string(a.Key[:]), string(b.Key[:])) })
	for _, r := range routes {
		if r.Self || !r.Reachable || r.NextHop.IsZero() {
			continue
		}
		if r.NextHop != r.Key {
			out[r.Key] = Relay{Via: r.NextHop, StartRelayed: true}
			continue
		}
		for _, q := range direct {
			if q.Key != r.Key && slices.Contains(q.Neighbors, r.Key) {
				out[r.Key] = Relay{Via: q.Key}
				break
			}
		}
	}
	return out
}
