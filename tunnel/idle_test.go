package tunnel

import (
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// TestMarkActive: data that another device carried (kernel WireGuard)
// stamps the named peers' pairs active at the coarse clock, and wakes the
// path loop for one that was idle; other peers are untouched.
func TestMarkActive(t *testing.T) {
	f := newRelayFixture(t)
	tn := &Tunnel{bind: f.bind}
	f.bind.coarse.Store(5e9)
	f.paths[f.a].idle.Store(true)
	tn.MarkActive(map[key.Public]bool{f.a: true, relayTestKey(7): true}) // 7: not a peer
	if got := f.paths[f.a].lastActive.Load(); got != 5e9 {
		t.Errorf("peer a active at %d; want the coarse clock, 5e9", got)
	}
	if got := f.paths[f.b].lastActive.Load(); got != 0 {
		t.Errorf("peer b, not named, active at %d", got)
	}
	select {
	case <-f.bind.woke:
	default:
		t.Error("the idle peer's data did not wake the path loop")
	}
	tn.MarkActive(nil) // nothing to do
}
