package integration

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// TestForgedDoneTransferIgnored is issue 14 acceptance 1 for the address
// ring, in namespaces, replaying the review's attack: h3 runs a test-only
// build (-tags forgetest) and forges a Done transfer of live h2's range to
// itself, signed by itself and certified by its own vote alone, with new
// states of h2's entries owned by h3. h3 believes it (it attaches an
// impostor on the address of h2's container). h1 and h2 change nothing:
// h2's range stays h2's in their status, their WireGuard peer for h3 gets
// no AllowedIPs in it, the claim is counted, and h1's container keeps
// reaching h2's container, never the impostor.
func TestForgedDoneTransferIgnored(t *testing.T) {
	needTool(t, "wg", "nft")
	forger, err := testbed.BuildBinaryTags(t.TempDir(), "forgetest")
	if err != nil {
		t.Fatal(err)
	}
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	h1, h2 := b.AddHost(testbed.HostOptions{}), b.AddHost(testbed.HostOptions{})
	h3 := b.AddHost(testbed.HostOptions{Binary: forger})
	hs := []*testbed.Host{h1, h2, h3}
	b.WaitMesh(30*time.Second, hs...)
	c1, c2 := h1.AddContainer(), h2.AddContainer()
	h3.AddContainer() // h3 holds a range of its own, as a member does
	waitIPAM(t, hs, 30*time.Second)
	if err := c1.PingEventually(c2.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	victim := testbed.Self(h2.Status()).Name
	forgerName := testbed.Self(h3.Status()).Name
	before := map[*testbed.Host][]string{}
	for _, h := range []*testbed.Host{h1, h2} {
		st, err := statusIPAM(h)
		if err != nil {
			t.Fatal(err)
		}
		before[h] = rangesOf(st, victim)
		if !slices.ContainsFunc(before[h], func(r string) bool { return netip.MustParsePrefix(r).Contains(netip.MustParseAddr(c2.Addr)) }) {
			t.Fatalf("%s: h2's ranges %v do not hold its container %s", h, before[h], c2.Addr)
		}
	}
	refused := map[*testbed.Host]uint64{h1: h1.Counter("ipam_done_refused_live"), h2: h2.Counter("ipam_done_refused_live")}
	unauthorized := map[*testbed.Host]uint64{h1: h1.Counter("ipam_entry_unauthorized"), h2: h2.Counter("ipam_entry_unauthorized")}

	if err := h3.Post("/v1/test/forge-ipam-done", api.RmpeerRequest{Peer: victim}); err != nil {
		t.Fatalf("the forging build refused to forge: %v", err)
	}
	// The forger believes its own forgery, so it will route h2's range to
	// itself and attach an impostor on h2's container's address.
	testbed.Eventually(t, 10*time.Second, "h3 takes h2's range in its own view", func() error {
		st, err := statusIPAM(h3)
		if err != nil {
			return err
		}
		if got := rangesOf(st, forgerName); !slices.ContainsFunc(got, func(r string) bool { return netip.MustParsePrefix(r).Contains(netip.MustParseAddr(c2.Addr)) }) {
			return fmt.Errorf("h3 shows its ranges as %v", got)
		}
		return nil
	})
	imp := h3.AddContainerWithIP(c2.IP)
	if _, err := imp.Exec("nft", "add table ip forge; add chain ip forge in { type filter hook input priority 0; }; add rule ip forge in ip saddr "+c1.Addr+" icmp type echo-request counter"); err != nil {
		t.Fatal(err)
	}

	for _, h := range []*testbed.Host{h1, h2} {
		testbed.Eventually(t, 20*time.Second, h.Name+" counts the forged claim", func() error {
			if n := h.Counter("ipam_done_refused_live"); n <= refused[h] {
				return fmt.Errorf("ipam_done_refused_live stays %d", n)
			}
			if n := h.Counter("ipam_entry_unauthorized"); n <= unauthorized[h] {
				return fmt.Errorf("ipam_entry_unauthorized stays %d (h3's states of h2's entries)", n)
			}
			return nil
		})
	}
	// Give gossip (anti-entropy every 10 s) time to carry anything it would.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		if err := c1.Ping(c2.Addr); err != nil {
			t.Errorf("h1's container lost h2's container: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, h := range []*testbed.Host{h1, h2} {
		st, err := statusIPAM(h)
		if err != nil {
			t.Fatal(err)
		}
		if got := rangesOf(st, victim); !slices.Equal(got, before[h]) {
			t.Errorf("%s: h2's ranges were %v, now %v", h, before[h], got)
		}
		for _, tr := range st.Transfers {
			if tr.State == "done" {
				t.Errorf("%s concluded a transfer: %+v", h, tr)
			}
		}
		for _, r := range rangesOf(st, forgerName) {
			if slices.Contains(before[h], r) {
				t.Errorf("%s gives h3 h2's range %s", h, r)
			}
		}
	}
	// AllowedIPs: only what each peer provably owns.
	out, err := h1.WG("show", "weavewg0", "dump")
	if err != nil {
		t.Fatal(err)
	}
	_, peers := parseWGDump(t, out)
	st := h1.Status()
	c2a := netip.MustParseAddr(c2.Addr)
	for _, p := range st.Peers {
		wp, ok := peers[p.PublicKey]
		if p.Self || !ok {
			continue
		}
		holds := slices.ContainsFunc(wp.allowedIPs, func(s string) bool {
			pr, err := netip.ParsePrefix(s)
			return err == nil && pr.Contains(c2a)
		})
		switch p.Nickname {
		case h2.Name:
			if !holds {
				t.Errorf("h1: h2's AllowedIPs %v lack its container %s", wp.allowedIPs, c2.Addr)
			}
		case h3.Name:
			if holds {
				t.Errorf("h1: h3's AllowedIPs %v hold h2's container %s", wp.allowedIPs, c2.Addr)
			}
		}
	}
	// The pings above went to h2's container, none to the impostor.
	if n := nftCount(t, imp); n != 0 {
		t.Errorf("the impostor on h3 received %d of h1's echo requests", n)
	}
	for _, h := range []*testbed.Host{h1, h2} {
		t.Logf("%s refused the Done claim %d times and h3's entry states %d times", h,
			h.Counter("ipam_done_refused_live")-refused[h], h.Counter("ipam_entry_unauthorized")-unauthorized[h])
	}
}

// rangesOf is the ranges status ipam gives peer name.
func rangesOf(st api.IPAMStatus, name string) []string {
	for _, p := range st.Peers {
		if p.Peer == name {
			return slices.Sorted(slices.Values(p.Ranges))
		}
	}
	return nil
}

var nftPackets = regexp.MustCompile(`counter packets (\d+)`)

// nftCount reads the forge table's counter in c's namespace.
func nftCount(t *testing.T, c *testbed.Container) uint64 {
	t.Helper()
	out, err := c.Exec("nft", "list", "chain", "ip", "forge", "in")
	if err != nil {
		t.Fatal(err)
	}
	m := nftPackets.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no counter in %q", strings.TrimSpace(out))
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}
