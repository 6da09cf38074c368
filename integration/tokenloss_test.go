package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestLostTokenRegistry is issue 14's "a member without its registry
// admits nobody until it has synced it", on real daemons. h2 made two
// tokens; while h2 is down, h1 revokes one of them; h2 then restarts
// without its tokens.json and without h1: it refuses both tokens (it
// cannot know which were revoked or used up). When h1 is back and h2 has
// the registry again, the revoked token is refused as revoked and the
// other admits a host.
func TestLostTokenRegistry(t *testing.T) {
	b := newBed(t, testbed.Options{})
	h1 := b.AddHost(testbed.HostOptions{NoPassword: true, NoPeers: true})
	h2 := b.AddHost(testbed.HostOptions{Token: createToken(t, h1, "--uses", "1").Token})
	b.WaitMesh(30*time.Second, h1, h2)
	good := createToken(t, h2, "--ttl", "1h")
	revoked := createToken(t, h2, "--ttl", "1h")
	testbed.Eventually(t, 30*time.Second, "h1 knows h2's tokens", func() error {
		if out := h1.CLI("token", "list"); !strings.Contains(out, revoked.ID) || !strings.Contains(out, good.ID) {
			return errorf("h1's tokens:\n%s", out)
		}
		return nil
	})
	h2.Stop()
	h1.CLI("token", "revoke", revoked.ID)
	h1.Stop()
	if err := os.Remove(filepath.Join(h2.StateDir, "tokens.json")); err != nil {
		t.Fatal(err)
	}
	h2.Launch()
	if !strings.Contains(h2.Log(), "starting without the token registry") {
		t.Error("h2 did not say it starts without its token registry")
	}

	joiner := b.AddHost(testbed.HostOptions{NoLaunch: true})
	for _, tok := range []string{good.Token, revoked.Token} {
		out, err := tryJoin(b, joiner, b.Path("joiner", "try"), tok)
		if err == nil || !strings.Contains(out, "lost its token registry") {
			t.Errorf("h2 without its registry: %v\n%s", err, out)
		}
	}
	if n := h2.Status().Counters["control_join_unsynced"]; n != 2 {
		t.Errorf("control_join_unsynced = %d, want 2", n)
	}

	h1.Launch()
	b.WaitMesh(60*time.Second, h1, h2)
	testbed.Eventually(t, 30*time.Second, "h2 has the registry back", func() error {
		if out := h2.CLI("token", "list"); !strings.Contains(out, revoked.ID) {
			return errorf("h2's tokens:\n%s", out)
		}
		return nil
	})
	if out, err := tryJoin(b, joiner, b.Path("joiner", "revoked"), revoked.Token); err == nil || !strings.Contains(out, "revoked") {
		t.Errorf("revoked token after the sync: %v\n%s", err, out)
	}
	joiner.Token = good.Token
	joiner.Peers = nil
	joiner.Launch()
	b.WaitMesh(60*time.Second, h1, h2, joiner)
}
