package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// TestEvictAndRotateSecret is acceptance 6 of issue 14. Five hosts with a
// container each; h1, h2 and h3's containers ping each other every 0.2 s
// throughout. h1 evicts h4; h5 is down; h2 rotates the secret. Then:
//   - h4's traffic, gossip and join attempts fail: its container reaches
//     nobody, its connections are refused (also with a new key and its
//     copy of the secret), its key is refused a join even with a new
//     token, and its address space is taken over;
//   - a token made before the rotation admits nobody;
//   - h5, down during the rotation, comes back, gets the new secret from
//     a member and its container is reached again (its WireGuard
//     handshakes run under the new preshared key), and keeps it across a
//     restart;
//   - not one ping among h1-h3's containers is lost.
func TestEvictAndRotateSecret(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(5)
	h1, h2, h3, h4, h5 := hs[0], hs[1], hs[2], hs[3], hs[4]
	cs := b.AddContainers(1)
	c1, c2, c3, c4, c5 := cs[0], cs[1], cs[2], cs[3], cs[4]
	b.WaitMesh(60*time.Second, hs...)
	for _, p := range [][2]*testbed.Container{{c1, c2}, {c2, c3}, {c3, c1}, {c4, c1}, {c5, c1}} {
		if err := p[0].PingEventually(p[1].Addr, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	oldToken := createToken(t, h1, "--ttl", "1h").Token
	// psk is the WireGuard preshared key h uses with peer o, as wg shows it.
	psk := func(h, o *testbed.Host) string {
		t.Helper()
		out, err := h.WG("show", "weavewg0", "preshared-keys")
		if err != nil {
			t.Fatalf("%s: wg show: %v", h, err)
		}
		pub := testbed.PeerByNick(h.Status(), o.Name).PublicKey
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == pub {
				return f[1]
			}
		}
		t.Fatalf("%s: wg shows no peer %s:\n%s", h, o, out)
		return ""
	}
	pskBefore := psk(h1, h2)

	const every = 200 * time.Millisecond
	var pings []*testbed.LongPing
	for _, p := range [][2]*testbed.Container{{c1, c2}, {c2, c3}, {c3, c1}} {
		lp, err := p[0].StartPing(p[1].Addr, every)
		if err != nil {
			t.Fatal(err)
		}
		pings = append(pings, lp)
	}
	stopped := false
	stopPings := func() {
		if stopped {
			return
		}
		stopped = true
		for i, lp := range pings {
			n, gap := lp.Stop()
			t.Logf("continuous ping %d: %d replies, longest gap %v", i, n, gap)
			if n == 0 || gap > 0 {
				t.Errorf("continuous ping %d lost pings: %d replies, longest gap %v", i, n, gap)
			}
		}
	}
	defer stopPings()

	// Evict h4 from h1, by nickname.
	var ev api.Evicted
	if err := json.Unmarshal([]byte(h1.CLI("evict", "--json", "h4")), &ev); err != nil {
		t.Fatal(err)
	}
	h4st := h4.Status()
	if ev.PublicKey != testbed.Self(h4st).PublicKey {
		t.Fatalf("evicted %+v, not h4", ev)
	}
	if out, err := h2.CLIErr("evict", "h4"); err == nil || !strings.Contains(out, "already") {
		t.Errorf("evicting h4 again: %v %q", err, out)
	}
	if out, err := h1.CLIErr("evict", "h1"); err == nil || !strings.Contains(out, "itself") {
		t.Errorf("self-eviction: %v %q", err, out)
	}
	live := []*testbed.Host{h1, h2, h3, h5}
	testbed.Eventually(t, 30*time.Second, "every member drops h4", func() error {
		for _, h := range live {
			st, err := h.StatusErr()
			if err != nil {
				return err
			}
			if testbed.PeerByNick(st, "h4") != nil {
				return errorf("%s still has h4 in its table", h)
			}
			if len(st.Evicted) != 1 || st.Evicted[0].PublicKey != ev.PublicKey {
				return errorf("%s shows evicted %+v", h, st.Evicted)
			}
			if st.Counters["control_connection_evicted"] == 0 && h != h1 {
				// h4 keeps redialling its targets; h1 may be dialled by nobody.
				return errorf("%s refused no connection of h4 yet", h)
			}
		}
		return nil
	})
	if err := c4.Ping(c1.Addr); err == nil {
		t.Error("h4's container still reaches h1's")
	}
	testbed.Eventually(t, 60*time.Second, "h4's address space taken over", func() error {
		for _, p := range h1.Status().IPAM.Peers {
			if p.Peer == ev.Peer {
				return errorf("h1's ring still has h4 owning %v", p.Ranges)
			}
		}
		return nil
	})
	if st := h4.Status(); testbed.Established(st, "h1") || testbed.Established(st, "h2") {
		t.Errorf("h4 still has an established control connection: %+v", st.Conns)
	} else if len(st.Evicted) != 1 || st.Evicted[0].PublicKey != ev.PublicKey {
		t.Errorf("h4 was not told of its eviction: %+v", st.Evicted)
	}

	// h5 goes down; h2 rotates the secret.
	h5.Stop()
	var rot api.SecretRotation
	if err := json.Unmarshal([]byte(h2.CLI("rotate-secret", "--json")), &rot); err != nil {
		t.Fatal(err)
	}
	if rot.Epoch != 1 || rot.Recipients < 4 {
		t.Fatalf("rotation %+v: want epoch 1 sealed to h1, h2, h3 and h5", rot)
	}
	testbed.Eventually(t, 30*time.Second, "h1-h3 use only the new secret", func() error {
		for _, h := range []*testbed.Host{h1, h2, h3} {
			st, err := h.StatusErr()
			if err != nil {
				return err
			}
			if st.Secret == nil || st.Secret.Epoch != 1 || st.Secret.ID != rot.ID || len(st.Secret.Active) != 1 {
				return errorf("%s secret %+v", h, st.Secret)
			}
		}
		return nil
	})

	testbed.Eventually(t, 10*time.Second, "h1 and h2 switch their preshared key", func() error {
		if a, b := psk(h1, h2), psk(h2, h1); a == pskBefore || a != b {
			return errorf("h1→h2 %s, h2→h1 %s, before %s", a, b, pskBefore)
		}
		return nil
	})

	// h4 with a new key and its copy of the old secret gets nothing.
	h4.Stop()
	oldKey, err := os.ReadFile(filepath.Join(h4.StateDir, "key"))
	if err != nil {
		t.Fatal(err)
	}
	// A new identity: the key, and the state bound to the old one.
	for _, f := range []string{"key", "ipam.db", "attachments.json"} {
		os.Remove(filepath.Join(h4.StateDir, f))
	}
	h4.Launch()
	time.Sleep(5 * time.Second) // h4 dials h1-h3 every few seconds meanwhile
	st := h4.Status()
	for _, c := range st.Conns {
		if c.State == api.StateEstablished {
			t.Errorf("h4 with a new key and the old secret got a connection: %+v", c)
		}
	}
	if n := counterSum(h1.Status().Counters, "control_handshake_stale_secret") +
		counterSum(h2.Status().Counters, "control_handshake_stale_secret") +
		counterSum(h3.Status().Counters, "control_handshake_stale_secret"); n == 0 {
		t.Error("no member counted a connection under the old secret")
	}
	if err := c4.Ping(c1.Addr); err == nil {
		t.Error("h4's container reaches h1's after the rotation")
	}
	h4.Stop()

	// Joins: the token from before the rotation admits nobody, and h4's
	// own key is refused even with a new token.
	h6 := b.AddHost(testbed.HostOptions{NoLaunch: true})
	join := func(stateDir, token string) (string, error) { return tryJoin(b, h6, stateDir, token) }
	if out, err := join(b.Path("h6", "fresh"), oldToken); err == nil || !strings.Contains(out, "refused") {
		t.Errorf("joining with a token made before the rotation: %v\n%s", err, out)
	}
	evictedDir := b.Path("h6", "evicted")
	if err := os.MkdirAll(evictedDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(evictedDir, "key"), oldKey, 0o600); err != nil {
		t.Fatal(err)
	}
	newToken := createToken(t, h1, "--ttl", "10m", "--uses", "1").Token
	if out, err := join(evictedDir, newToken); err == nil || !strings.Contains(out, "evicted") {
		t.Errorf("h4's key joining with a new token: %v\n%s", err, out)
	}
	if n := h1.Status().Counters["control_join_evicted"]; n == 0 {
		t.Error("h1 counted no evicted join attempt")
	}

	// h5 comes back: it catches up and is reached under the new secret.
	h5.Launch()
	b.WaitMesh(60*time.Second, h1, h2, h3, h5)
	if st := h5.Status(); st.Secret == nil || st.Secret.Epoch != 1 || st.Secret.ID != rot.ID {
		t.Fatalf("h5 after coming back: %+v", st.Secret)
	}
	if n := counterSum(h1.Status().Counters, "control_catchup_served") + counterSum(h2.Status().Counters, "control_catchup_served") +
		counterSum(h3.Status().Counters, "control_catchup_served"); n == 0 {
		t.Error("no member sent h5 the new secret on a catch-up connection")
	}
	if err := c5.PingEventually(c1.Addr, 30*time.Second); err != nil {
		t.Error(err)
	}
	if err := c2.PingEventually(c5.Addr, 30*time.Second); err != nil {
		t.Error(err)
	}
	stopPings()

	// A restart keeps the new secret.
	h5.Kill()
	h5.Launch()
	b.WaitMesh(60*time.Second, h1, h2, h3, h5)
	if st := h5.Status(); st.Secret == nil || st.Secret.Epoch != 1 || st.Secret.ID != rot.ID {
		t.Fatalf("h5 after a restart: %+v", st.Secret)
	}
	if err := c5.PingEventually(c3.Addr, 30*time.Second); err != nil {
		t.Error(err)
	}
}

// tryJoin runs `weavewg join TOKEN` in h's namespace with its own state
// dir, for a join expected to be refused: a join that is (wrongly)
// admitted runs the daemon, which the deadline ends, and the caller's
// check of the output fails.
func tryJoin(b *testbed.Bed, h *testbed.Host, stateDir, token string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.Netns, b.BinaryPath(), "join", "--state-dir", stateDir,
		"--api-socket", filepath.Join(stateDir, "api.sock"), "--join-timeout", "15s", token)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
