package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// connWhy is the rule that chose h's path to the peer nick, "" if none.
func connWhy(h *testbed.Host, nick string) (string, error) {
	st, err := h.StatusErr()
	if err != nil {
		return "", err
	}
	for _, c := range testbed.ConnsTo(st, nick) {
		if c.PathWhy != "" {
			return c.PathWhy, nil
		}
	}
	return "", fmt.Errorf("%s has no path to %s", h, nick)
}

// TestIdlePairWakesOnFirstPacket is acceptance 3 of issue 18: a pair that
// carried no data for --idle-after goes quiet (both ends say so, and no
// path probes leave the host), and the first packet wakes it: a 5-ping run
// has its first echo answered and loses none.
func TestIdlePairWakesOnFirstPacket(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	args := []string{"--idle-after", "3s"}
	h1 := b.AddHost(testbed.HostOptions{NoPeers: true, Args: args})
	h2 := b.AddHost(testbed.HostOptions{Args: args})
	h3 := b.AddHost(testbed.HostOptions{Args: args})
	b.WaitMesh(60*time.Second, h1, h2, h3)
	c2, c3 := h2.AddContainer(), h3.AddContainer()
	if err := c2.PingEventually(c3.Addr, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	for _, pair := range [][2]*testbed.Host{{h2, h3}, {h3, h2}} {
		testbed.Eventually(t, 60*time.Second, pair[0].Name+"'s pair with "+pair[1].Name+" idle", func() error {
			why, err := connWhy(pair[0], pair[1].Name)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(why, "idle") {
				return fmt.Errorf("path: %s", why)
			}
			return nil
		})
	}
	// Every pair of this flat, public mesh is idle once nobody sends: the
	// hosts send no path probes at all.
	for _, h := range []*testbed.Host{h1, h2, h3} {
		testbed.Eventually(t, 60*time.Second, h.Name+" sends no probes", func() error {
			before := h.Counter("udp_relay_probes_sent")
			time.Sleep(2500 * time.Millisecond)
			if d := h.Counter("udp_relay_probes_sent") - before; d != 0 {
				return fmt.Errorf("%d probes sent in 2.5 s", d)
			}
			return nil
		})
	}

	out, err := c2.Exec("ping", "-c", "5", "-i", "0.2", "-W", "1", "-n", c3.Addr)
	t.Logf("first packets after the pause:\n%s", out)
	if err != nil {
		t.Fatalf("ping after the pause: %v", err)
	}
	if !strings.Contains(out, "icmp_seq=1 ") {
		t.Errorf("the first echo after the pause was not answered")
	}
	if !strings.Contains(out, " 0% packet loss") {
		t.Errorf("echoes lost after the pause")
	}
	why, err := connWhy(h2, h3.Name)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(why, "idle") {
		t.Errorf("the pair did not wake: %s", why)
	}
}
