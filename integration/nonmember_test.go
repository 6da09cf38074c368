package integration

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestNonMemberOnTheUnderlay is issue 14 acceptance 3: a machine on h1's
// underlay LAN that routes the overlay range via h1 reaches no container,
// not h1's overlay address and not its DNS server, with its own source or
// with a spoofed overlay source aimed at another host's container through
// h1's tunnel. Members keep reaching each other.
func TestNonMemberOnTheUnderlay(t *testing.T) {
	needTool(t, "tcpdump")
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	h1, h2 := b.AddHost(testbed.HostOptions{}), b.AddHost(testbed.HostOptions{})
	b.WaitMesh(30*time.Second, h1, h2)
	c1 := named(t, h1, "web")
	c2 := h2.AddContainer()
	if err := c1.PingEventually(c2.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	x := b.AddNode(150)
	b.MustIP(x, "route", "add", "10.32.0.0/12", "via", h1.UnderlayIP)
	hostIP := strings.Split(h1.HostIP, "/")[0]

	pingFrom := func(src, dst string) bool {
		args := []string{"netns", "exec", x, "ping", "-c", "2", "-W", "1", "-n", "-q"}
		if src != "" {
			args = append(args, "-I", src)
		}
		return exec.Command("ip", append(args, dst)...).Run() == nil
	}
	for _, dst := range []string{c1.Addr, hostIP, c2.Addr} {
		if pingFrom("", dst) {
			t.Errorf("non-member pinged %s through h1", dst)
		}
	}
	if r, err := testbed.DNSQuery(x, hostIP+":53", "web.weave.local", mdns.TypeA, 2*time.Second); err == nil {
		t.Errorf("non-member got a DNS answer from h1: %v", r)
	}

	// Spoofed: x takes an unused address of h1's range as its own and
	// pings c2 on h2 through h1. Whether c2 sees the request is what
	// counts (its reply would go to h1, not to x).
	spoof := netip.MustParseAddr(c1.Addr).Next().Next().Next().String()
	b.MustIP(x, "addr", "add", spoof+"/32", "dev", "eth0")
	dump := exec.Command("ip", "netns", "exec", c2.Netns, "timeout", "6", "tcpdump", "-n", "-c", "1", "-i", "any", "icmp and src host "+spoof)
	var out strings.Builder
	dump.Stdout, dump.Stderr = &out, &out
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // tcpdump listening
	pingFrom(spoof, c2.Addr)
	err := dump.Wait()
	if strings.Contains(out.String(), "ICMP echo request") || err == nil {
		t.Errorf("a spoofed packet from a non-member reached c2 through h1's tunnel:\n%s", out.String())
	}

	// Members are unaffected.
	if err := c1.PingEventually(c2.Addr, 10*time.Second); err != nil {
		t.Error(err)
	}
	if err := c2.PingEventually(c1.Addr, 10*time.Second); err != nil {
		t.Error(err)
	}
	if _, r, err := lookupA(c1, hostIP+":53", "web.weave.local"); err != nil || r.Rcode != mdns.RcodeSuccess {
		t.Errorf("a member's container lost DNS: %v %v", r, err)
	}
}
