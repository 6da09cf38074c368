package tunnel

import (
	"os/exec"
	"regexp"
	"strconv"
	"testing"

	"github.com/weavewg/weavewg/internal/netnstest"
)

// filterDrops reads the counter of the forward filter's rule that drops
// what the TUN would send anywhere but the bridge, in ns, or -1 when the
// table is not there. (Not the table's first counter: since attach
// --egress, the chain starts with the rule that drops the bridge's traffic
// leaving the overlay.)
func filterDrops(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "nft", "list", "table", "inet", "weavewg_weavewg0").CombinedOutput()
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`(?s)chain from_peer \{\s*oif(?:name)? != "weavewg" counter packets (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no counter in the forward filter:\n%s", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestForwardFilter: a member cannot use a host as a router into the host's
// other networks, while the host's own overlay address stays reachable
// (the test hosts are exposed).
func TestForwardFilter(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed (make test installs it); it is only used to read the table")
	}
	a, b := twoHosts(t)
	// b has another network, 203.0.113.0/24, on a veth of its own; a
	// routes it into the tunnel and WireGuard lets it through to b.
	run(t, "ip", "-n", b.ns.Name, "link", "add", "outside0", "type", "veth", "peer", "name", "outside1")
	run(t, "ip", "-n", b.ns.Name, "addr", "add", "203.0.113.1/24", "dev", "outside0")
	run(t, "ip", "-n", b.ns.Name, "link", "set", "outside0", "up")
	run(t, "ip", "-n", b.ns.Name, "link", "set", "outside1", "up")
	a.setPeers(t, b.peerConfig("10.32.2.0/24", "203.0.113.0/24"))
	run(t, "ip", "-n", a.ns.Name, "route", "add", "203.0.113.0/24", "dev", "weavewg0", "src", a.hostIP.Addr().String())
	if out, err := ping(a.ns, b.hostIP.Addr().String()); err != nil {
		t.Fatalf("the peer's own overlay address is unreachable: %v\n%s", err, out)
	}
	before := filterDrops(t, b.ns)
	if before < 0 {
		t.Fatal("no forward filter table in the host's namespace")
	}
	exec.Command("ip", "netns", "exec", a.ns.Name, "ping", "-c", "3", "-i", "0.2", "-W", "1", "203.0.113.5").Run()
	if after := filterDrops(t, b.ns); after < before+3 {
		t.Fatalf("the filter dropped %d packets for 203.0.113.5 arriving from the tunnel, want 3", after-before)
	}
	if err := b.host.Close(); err != nil {
		t.Fatal(err)
	}
	if filterDrops(t, b.ns) != -1 {
		t.Error("the forward filter outlived Close")
	}
}
