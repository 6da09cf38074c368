package ipam

import (
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// TestStatusShowsOwnFreeAtOnce: this peer's line in Status counts an
// attach (and a release) at once; its published count follows at the next
// tick. It showed the published count, a tick late: the winner of
// TestIPAMRmpeer, read just after it claimed the dead peer's address,
// showed one free address more than it had (and `status ipam` and the
// free-addresses metric disagreed with the used count beside them).
func TestStatusShowsOwnFreeAtOnce(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openTest(t, n, pk(1), "")
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	a.Tick()
	selfFree := func() uint64 {
		for _, p := range a.Status().Peers {
			if p.Peer == a.self {
				return p.Free
			}
		}
		t.Fatal("no line for this peer")
		return 0
	}
	// 10.32.0.0/24 less the network, broadcast and reserved 10.32.0.1.
	if got := selfFree(); got != 253 {
		t.Fatalf("free %d at the start, want 253", got)
	}
	for _, id := range []string{"c1", "c2", "c3"} {
		if _, err := a.Allocate(id); err != nil {
			t.Fatal(err)
		}
	}
	if got := selfFree(); got != 250 {
		t.Fatalf("free %d after 3 attaches, want 250", got)
	}
	if _, err := a.Free("c2"); err != nil {
		t.Fatal(err)
	}
	if got := selfFree(); got != 251 {
		t.Fatalf("free %d after a release, want 251", got)
	}
	// What the others read is the published count: it catches up at the tick.
	a.Tick()
	if got := a.View().Ring.FreeOf(a.self); got != 251 {
		t.Fatalf("published free %d after the tick, want 251", got)
	}
}
