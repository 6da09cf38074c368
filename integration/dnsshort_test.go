package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// forwardCounters are the DNS counters that move when a query goes
// upstream, answered or not.
var forwardCounters = []string{"dns_forwarded", "dns_forward_failed", "dns_forward_upstream_error", "dns_forward_dropped_busy"}

// TestDNSShortNameUpstreamDown is issue 19's acceptance 5: a container set
// up the way `weavewg dns-args` sets one up (the host's overlay address as
// its only nameserver, weave.local as its search domain) runs glibc's
// `getent hosts db` while the upstream resolver is unreachable. The answer
// is db's address, and no query went upstream (glibc's fallback to the bare
// name "db" is answered from the table, not forwarded to time out). A name
// outside weave.local gets SERVFAIL and the daemon logs the upstream's
// address.
func TestDNSShortNameUpstreamDown(t *testing.T) {
	needTool(t, "getent")
	b := newBed(t, testbed.Options{})
	// Nothing answers at this underlay address: the upstream is down.
	const deadUpstream = "192.0.2.250"
	h1 := b.AddHost(testbed.HostOptions{Args: []string{"--dns-upstream", deadUpstream}})
	h2 := b.AddHost(testbed.HostOptions{Args: []string{"--dns-upstream", deadUpstream}})
	b.WaitMesh(30*time.Second, h1, h2)
	client := h1.AddContainer()
	db := h2.AddContainer()
	h2.CLI("dns-add", db.Addr, "db")

	// What `weavewg dns-args` gives docker run (--dns, --dns-search), as
	// the resolv.conf ip netns exec shows the container.
	dnsArgs := h1.CLI("dns-args")
	hostIP := strings.Split(h1.Status().HostIP, "/")[0]
	if !strings.Contains(dnsArgs, hostIP) || !strings.Contains(dnsArgs, "weave.local") {
		t.Fatalf("dns-args = %q, want the host address %s and the weave.local search domain", dnsArgs, hostIP)
	}
	dir := filepath.Join("/etc/netns", client.Netns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver "+hostIP+"\nsearch weave.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// h1 learns db from h2 by gossip.
	testbed.Eventually(t, 20*time.Second, "h1 resolves db.weave.local", func() error {
		out, err := client.Exec("getent", "hosts", "db.weave.local")
		if err != nil || !strings.HasPrefix(out, db.Addr+" ") {
			return errorf("getent hosts db.weave.local: %q %v", out, err)
		}
		return nil
	})

	before := h1.Status().Counters
	start := time.Now()
	out, err := client.Exec("getent", "hosts", "db")
	took := time.Since(start)
	after := h1.Status().Counters
	t.Logf("getent hosts db: %q in %v", strings.TrimSpace(out), took.Round(time.Millisecond))
	if err != nil || !strings.HasPrefix(out, db.Addr+" ") {
		t.Fatalf("getent hosts db = %q, %v; want %s", out, err, db.Addr)
	}
	if got, was := counterSum(after, forwardCounters...), counterSum(before, forwardCounters...); got != was {
		t.Errorf("getent hosts db went upstream: forward counters %d → %d", was, got)
	}
	if got, was := after["dns_answered_local"]+after["dns_nodata"], before["dns_answered_local"]+before["dns_nodata"]; got <= was {
		t.Errorf("getent hosts db was not answered from the table (answered+nodata %d → %d)", was, got)
	}

	// A name only the upstream knows: SERVFAIL, and the log names the
	// upstream that does not answer.
	out, err = client.Exec("getent", "hosts", "example.org")
	if err == nil {
		t.Errorf("getent hosts example.org with the upstream down answered %q", out)
	}
	if st := h1.Status(); st.Counters["dns_forward_failed"] == before["dns_forward_failed"] {
		t.Errorf("example.org: no SERVFAIL counted (dns_forward_failed %d)", st.Counters["dns_forward_failed"])
	}
	testbed.Eventually(t, 5*time.Second, "the daemon logs the unreachable upstream", func() error {
		for _, l := range strings.Split(h1.Log(), "\n") {
			if strings.Contains(l, "upstream DNS server not answering") && strings.Contains(l, deadUpstream+":53") {
				return nil
			}
		}
		return errorf("no log line naming %s:53", deadUpstream)
	})
}
