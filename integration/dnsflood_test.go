package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/integration/testbed"
)

// silentIP runs an upstream resolver that never answers: every forward to
// it holds its socket for the whole forward timeout, the worst case for
// the forwarder.
const silentIP = "192.0.2.201"

type silentServer struct{}

func (silentServer) ServeDNS(mdns.ResponseWriter, *mdns.Msg) {}

// TestDNSForwardFlood is issue 14 acceptance 4: dnsperf floods one host's
// server from one container with names that all go upstream (to a resolver
// that never answers). The daemon's open files and goroutines stay within
// the forwarder's bounds, its API and control connections keep working,
// another container's weave.local lookups keep answering, and the drops
// are counted.
func TestDNSForwardFlood(t *testing.T) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		t.Skip("dnsperf not installed (make deps)")
	}
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	if err := b.DNSServe(b.AddNode(201), silentIP+":53", silentServer{}); err != nil {
		t.Fatal(err)
	}
	args := []string{"--dns-upstream", silentIP + ":53"}
	h0 := b.AddHost(testbed.HostOptions{Args: args})
	h1 := b.AddHost(testbed.HostOptions{Args: args})
	b.WaitMesh(30*time.Second, h0, h1)
	flood := named(t, h0, "flood")
	other := named(t, h0, "other")
	named(t, h1, "web")
	server := dnsServer(t, h0)
	var web []string
	testbed.Eventually(t, 10*time.Second, "web.weave.local answers", func() error {
		got, _, err := lookupA(other, server, "web.weave.local")
		if err != nil || len(got) != 1 {
			return fmt.Errorf("%v %v", got, err)
		}
		web = got
		return nil
	})

	fds0, err := h0.OpenFiles()
	if err != nil {
		t.Fatal(err)
	}
	gs0, err := h0.Goroutines()
	if err != nil {
		t.Fatal(err)
	}
	names := filepath.Join(t.TempDir(), "names")
	var sb strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&sb, "name%d.example.org A\n", i)
	}
	if err := os.WriteFile(names, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host := strings.Split(server, ":")[0]
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", flood.Netns, "dnsperf",
		"-s", host, "-d", names, "-l", "6", "-c", "16", "-q", "2000", "-t", "1")
	out := make(chan string, 1)
	go func() {
		o, _ := cmd.CombinedOutput()
		out <- string(o)
	}()

	maxFds, maxGs, lookups, statuses, retries := fds0, gs0, 0, 0, 0
	deadline := time.Now().Add(6 * time.Second)
	time.Sleep(500 * time.Millisecond) // let the flood build up
	for time.Now().Before(deadline) {
		if n, err := h0.OpenFiles(); err == nil {
			maxFds = max(maxFds, n)
		}
		if n, err := h0.Goroutines(); err == nil {
			maxGs = max(maxGs, n)
		} else {
			t.Errorf("API during the flood: %v", err)
		}
		if _, err := h0.StatusErr(); err != nil {
			t.Errorf("status during the flood: %v", err)
		} else {
			statuses++
		}
		// A stub resolver retries once after a timeout; so does this.
		got, r, err := lookupA(other, server, "web.weave.local")
		if err != nil {
			retries++
			got, r, err = lookupA(other, server, "web.weave.local")
		}
		if err != nil || r.Rcode != mdns.RcodeSuccess || !sameSet(got, web) {
			t.Errorf("web.weave.local from another container during the flood: %v %v", got, err)
		} else {
			lookups++
		}
		time.Sleep(200 * time.Millisecond)
	}
	perf := <-out
	t.Logf("dnsperf:\n%s", perf)
	if !strings.Contains(perf, "Queries sent:") {
		t.Fatalf("dnsperf did not run")
	}
	if !testbed.Established(h0.Status(), h1.Name) || !testbed.Established(h1.Status(), h0.Name) {
		t.Errorf("control connection h0-h1 lost during the flood")
	}
	c := h0.Status().Counters
	t.Logf("open files %d → max %d, goroutines %d → max %d; %d lookups (%d retried) and %d status calls answered during the flood; counters: rate %d, busy %d, forwarded %d, failed %d",
		fds0, maxFds, gs0, maxGs, lookups, retries, statuses, c["dns_forward_dropped_rate"], c["dns_forward_dropped_busy"], c["dns_forwarded"], c["dns_forward_failed"])
	// Bounds: every forward in flight holds one socket and a goroutine or
	// two; TCP is not used by dnsperf here. Without the bounds this flood
	// held thousands of each.
	if maxFds > fds0+2*64+32 {
		t.Errorf("open files grew from %d to %d during the flood", fds0, maxFds)
	}
	if maxGs > gs0+4*64+200 {
		t.Errorf("goroutines grew from %d to %d during the flood", gs0, maxGs)
	}
	if c["dns_forward_dropped_rate"] == 0 {
		t.Errorf("no forward was dropped by the per-source rate limit: %v", c)
	}
}
