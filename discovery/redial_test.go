package discovery

import (
	"sync"
	"testing"
	"time"
)

// TestRedialAfterPeerRestart: a target whose connection was up is redialled
// every redialFast after it ends, not after the backoff (20 s here), so a
// peer that restarts on the same port (an upgrade) is back at once.
func TestRedialAfterPeerRestart(t *testing.T) {
	k := newKey(t)
	b1 := newTestRouter(t, "b-old", withKey(k))
	addr := b1.addr()
	a := newTestRouter(t, "a", withTuning(func(tu *tunables) {
		tu.backoffMin, tu.backoffMax = 20*time.Second, 40*time.Second
	}))
	a.Connect(addr)
	waitFor(t, 5*time.Second, "a reaches b-old", func() bool {
		p, ok := a.peer(k.Public())
		return ok && p.Nickname == "b-old" && p.Reachable
	})
	b1.Close()
	time.Sleep(300 * time.Millisecond) // a few refused dials
	newTestRouter(t, "b-new", withKey(k), func(c *Config, _ *tunables) { c.ListenAddr = addr })
	waitFor(t, 5*time.Second, "a reaches the restarted b well before its 20 s backoff", func() bool {
		p, ok := a.peer(k.Public())
		return ok && p.Nickname == "b-new" && p.Reachable
	})
}

// A target whose connection ends while we still hold the connections
// gossip dials aim for is redialled after the backoff, not every
// redialFast: we learn through the mesh when it is back, and after a
// partition each target the cut ended connected again the moment it
// healed, most of a heal's new connections (52 of 56 at N=300 in
// simulation), each a new version of two records flooded everywhere.
// Here a (limit 2: it aims for 1) holds c and its target b; b stops.
func TestTargetRedialsAfterBackoffWhileWellConnected(t *testing.T) {
	b := newTestRouter(t, "b")
	c := newTestRouter(t, "c")
	var mu sync.Mutex
	dials := 0
	a := newTestRouter(t, "a", func(cfg *Config, tu *tunables) {
		cfg.ConnLimit = 2
		tu.backoffMin, tu.backoffMax = 20*time.Second, 40*time.Second
		cfg.Trace = func(ev TraceEvent) {
			if ev.Kind == TraceDial && ev.Addr == b.addr() {
				mu.Lock()
				dials++
				mu.Unlock()
			}
		}
	})
	a.Connect(c.addr())
	a.Connect(b.addr())
	waitFor(t, 5*time.Second, "a connected to b and c", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.active) == 2
	})
	mu.Lock()
	before := dials
	mu.Unlock()
	b.Close()
	waitFor(t, 5*time.Second, "a lost b", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.active) == 1
	})
	time.Sleep(20 * a.tun.redialFast) // twenty fast redials' worth
	mu.Lock()
	defer mu.Unlock()
	if n := dials - before; n > 0 {
		t.Fatalf("a redialled its target b %d times within %v of losing it while holding c (its connWant of 1), with a backoff of 20 s", n, 20*a.tun.redialFast)
	}
}
