package daemon

import (
	"testing"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/key"
)

// TestKeepalives: a host not known to be public keeps alive the peers it
// depends on whatever the key order, a public one keeps none alive, and two
// independent peers leave it to key order.
func TestKeepalives(t *testing.T) {
	k := func(n byte) key.Public { var p key.Public; p[0] = n; return p }
	pub, relay, other := k(1), k(2), k(3)
	peers := []discovery.Peer{
		{Key: k(9), Self: true, Reachable: true},
		{Key: pub, Reachable: true, Direct: true},
		{Key: relay, Reachable: true},
		{Key: other, Reachable: true},
	}
	relays := map[key.Public]relayChoice{other: {via: relay, relayed: true}}
	tests := []struct {
		name   string
		public bool
		want   map[key.Public]tunnel.Keepalive
	}{
		{"behind a NAT or not known", false, map[key.Public]tunnel.Keepalive{pub: tunnel.KeepaliveOn, relay: tunnel.KeepaliveOn, other: tunnel.KeepaliveByKey}},
		{"public", true, map[key.Public]tunnel.Keepalive{pub: tunnel.KeepaliveOff, relay: tunnel.KeepaliveOff, other: tunnel.KeepaliveOff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := keepalives(peers, relays, tt.public)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d peers, want %d", len(got), len(tt.want))
			}
			for p, w := range tt.want {
				if got[p] != w {
					t.Errorf("peer %d: %v, want %v", p[0], got[p], w)
				}
			}
		})
	}
}
