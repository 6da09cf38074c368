package discovery

import (
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
