package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestHostIPOfAnotherContainerRefused is issue 14 acceptance 2 with the
// stock binary: h3 launches with --host-ip set to the address of a
// container on h1. The other hosts refuse it (no /32 route or AllowedIPs
// to h3 for it), status says so, and traffic to the container is
// unaffected.
func TestHostIPOfAnotherContainerRefused(t *testing.T) {
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	h1, h2 := b.AddHost(testbed.HostOptions{}), b.AddHost(testbed.HostOptions{})
	b.WaitMesh(30*time.Second, h1, h2)
	c1, c2 := h1.AddContainer(), h2.AddContainer()
	if err := c2.PingEventually(c1.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	bits := strings.Split(h1.HostIP, "/")[1]
	h3 := b.AddHost(testbed.HostOptions{HostIP: c1.Addr + "/" + bits})
	b.WaitMesh(30*time.Second, h1, h2, h3)

	for _, h := range []*testbed.Host{h1, h2} {
		testbed.Eventually(t, 20*time.Second, h.Name+" refuses h3's host address", func() error {
			p := testbed.PeerByNick(h.Status(), h3.Name)
			if p == nil || p.HostIPRefused == "" {
				return fmt.Errorf("status shows h3 as %+v", p)
			}
			return nil
		})
		out, err := h.Exec("ip", "-4", "route", "show", c1.Addr+"/32")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" {
			t.Errorf("%s routes %s/32 (h3's claimed host address): %s", h, c1.Addr, out)
		}
	}
	t.Logf("h2 shows h3: %s", testbed.PeerByNick(h2.Status(), h3.Name).HostIPRefused)
	out := h2.CLI("status", "peers")
	if !strings.Contains(out, "refused") {
		t.Errorf("status peers does not show the refusal:\n%s", out)
	}
	// Traffic to the container still reaches it, from h2 and from h3's own
	// containers.
	if err := c2.PingEventually(c1.Addr, 10*time.Second); err != nil {
		t.Error(err)
	}
	c3 := h3.AddContainer()
	if err := c3.PingEventually(c2.Addr, 20*time.Second); err != nil {
		t.Error(err)
	}
}
