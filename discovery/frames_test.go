package discovery

import (
	"testing"
	"time"
)

// FramesSent counts each frame written by its message type: a connection
// starts with one hello and one features message each way, and a record
// flooded to a neighbour goes as a records message (simbench splits a
// change's frames by type with it).
func TestFramesSentByType(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	if err := b.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a and b reach each other", func() bool {
		return len(a.Reachable()) == 2 && len(b.Reachable()) == 2
	})
	for _, r := range []*testRouter{a, b} {
		got := r.FramesSent()
		if got["hello"] != 1 || got["features"] != 1 {
			t.Fatalf("%s sent frames %v; want one hello and one features message", r.cfg.Nickname, got)
		}
	}
	before := a.FramesSent()["records"]
	a.bumpSelfLockedForTest()
	waitFor(t, 10*time.Second, "a's new version sent to b as a records message", func() bool {
		return a.FramesSent()["records"] > before
	})
}
