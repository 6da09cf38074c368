package integration

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

const (
	wgPort    = 6783
	vxlanPort = 6784 // --port+1
)

// underlayFlow sums what the capture saw between two underlay addresses
// (either direction) on one UDP port: packets and bytes of datagrams larger
// than any control message (WireGuard handshakes and keepalives, VXLAN
// probes are under 200 bytes on the wire), i.e. carried payload. On the
// WireGuard port only WireGuard data messages count (path-MTU probes are
// large relay frames).
func underlayFlow(ps []testbed.Packet, a, b string, port uint16) (big int, bytes int) {
	aa, ba := netip.MustParseAddr(a), netip.MustParseAddr(b)
	for _, p := range ps {
		if p.Proto != 17 || p.Fragment {
			continue
		}
		if !(p.Src == aa && p.Dst == ba || p.Src == ba && p.Dst == aa) {
			continue
		}
		if p.SPort != port && p.DPort != port {
			continue
		}
		if port == wgPort && p.UDPHead != [4]byte{4, 0, 0, 0} {
			continue
		}
		if p.Len > 200 {
			big++
			bytes += p.Len
		}
	}
	return big, bytes
}

// TestTrustedSubnetsVXLAN is acceptance 2 of issue 16. h1 and h2 trust
// their own underlay addresses and h4's; h3 is launched with the same flag
// but lies outside it; h4 trusts nothing (no flag). Between h1 and h2
// container traffic crosses the underlay as VXLAN on 6784 and not as
// WireGuard; h3 talks to both over WireGuard (outside the trusted subnet),
// and so does h4 with h1 (one side alone cannot turn encryption off).
// Blocking 6784 mid-transfer moves the pair back to WireGuard without
// losing the TCP flow, and lifting the block brings VXLAN back.
func TestTrustedSubnetsVXLAN(t *testing.T) {
	needTool(t, "ping", "tcpdump", "nft")
	b := newBed(t, testbed.Options{})
	trusted := []string{"--trusted-subnets", underlay(1) + "/32," + underlay(2) + "/32," + underlay(4) + "/32"}
	// h1 has ufw's default-deny forward policy: weavewg must pass it on the
	// VXLAN path as on WireGuard's.
	h1 := b.AddHost(testbed.HostOptions{Args: trusted, Firewall: testbed.FirewallIPTables})
	h2 := b.AddHost(testbed.HostOptions{Args: trusted})
	h3 := b.AddHost(testbed.HostOptions{Args: trusted})
	h4 := b.AddHost(testbed.HostOptions{})
	c1, c2, c3, c4 := h1.AddContainer(), h2.AddContainer(), h3.AddContainer(), h4.AddContainer()
	for _, c := range []*testbed.Container{c2, c3, c4} {
		if err := c1.PingEventually(c.Addr, 40*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := c2.PingEventually(c3.Addr, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		h    *testbed.Host
		peer string
		want string
	}{
		{h1, "h2", "vxlan (trusted)"}, {h2, "h1", "vxlan (trusted)"},
		{h1, "h3", "userspace wireguard"}, {h3, "h1", "userspace wireguard"},
		{h2, "h3", "userspace wireguard"}, {h1, "h4", "userspace wireguard"},
	} {
		if _, err := w.h.WaitDatapath(w.peer, w.want, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	out := h1.CLI("status", "connections")
	t.Logf("h1# weavewg status connections\n%s", out)
	if !containsLine(out, underlay(2), "vxlan (trusted)") || !containsLine(out, underlay(3), "userspace wireguard") {
		t.Errorf("status connections on h1 does not say vxlan (trusted) for h2 and userspace wireguard for h3")
	}

	if out := h1.CLI("status"); !strings.Contains(out, "NONE between peers") {
		t.Errorf("status on h1 does not say that trusted pairs are unencrypted:\n%s", out)
	}

	// What crosses the underlay.
	cp := b.StartCapture("trusted")
	const size = 4 << 20
	for _, pair := range [][2]*testbed.Container{{c1, c2}, {c2, c1}, {c1, c3}, {c3, c2}, {c4, c1}} {
		r, err := testbed.Transfer(pair[0], pair[1], 5016, size, 60*time.Second)
		if err != nil {
			t.Fatalf("transfer %s → %s: %v", pair[0], pair[1], err)
		}
		t.Logf("%s → %s: %d bytes intact in %v", pair[0], pair[1], r.Bytes, r.Took.Round(time.Millisecond))
	}
	cp.Stop()
	ps, err := cp.Packets()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		a, b       string
		vx, wgWant bool
	}{
		{underlay(1), underlay(2), true, false},
		{underlay(1), underlay(3), false, true},
		{underlay(2), underlay(3), false, true},
		{underlay(1), underlay(4), false, true},
	} {
		vxN, vxB := underlayFlow(ps, f.a, f.b, vxlanPort)
		wgN, wgB := underlayFlow(ps, f.a, f.b, wgPort)
		t.Logf("%s <-> %s: VXLAN %d packets %d bytes, WireGuard %d packets %d bytes", f.a, f.b, vxN, vxB, wgN, wgB)
		// tcpdump may miss packets on a loaded machine: half the payload
		// seen on a port is proof enough that the port carried it.
		if f.vx && vxB < size/2 || !f.vx && vxN > 0 {
			t.Errorf("%s <-> %s: %d VXLAN bytes on port %d; want VXLAN %v", f.a, f.b, vxB, vxlanPort, f.vx)
		}
		if f.wgWant && wgB < size/2 || !f.wgWant && wgN > 0 {
			t.Errorf("%s <-> %s: %d WireGuard data packets (%d bytes) on port %d; want WireGuard %v", f.a, f.b, wgN, wgB, wgPort, f.wgWant)
		}
	}

	// VXLAN carries no authentication: h1 drops datagrams to its VXLAN port
	// from outside the trusted subnets (h3) before the kernel decapsulates
	// them, and takes them from a trusted address (h2).
	dropped := func() int {
		out, err := h1.Exec("nft", "list", "table", "ip", "weavewg_vxweavewg0")
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`udp dport 6784 counter packets (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("h1's VXLAN filter has no drop rule:\n%s", out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	junk := make([]byte, 64)
	junk[0] = 0x08 // VXLAN flags: VNI present
	to := netip.AddrPortFrom(netip.MustParseAddr(h1.UnderlayIP), vxlanPort)
	before := dropped()
	if err := testbed.SendRawUDP(h2.Netns, netip.MustParseAddrPort(h2.UnderlayIP+":40000"), to, junk); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := dropped(); n != before {
		t.Errorf("a datagram from trusted h2 hit the VXLAN drop rule (%d → %d)", before, n)
	}
	for i := 0; i < 3; i++ {
		if err := testbed.SendRawUDP(h3.Netns, netip.MustParseAddrPort(h3.UnderlayIP+":40000"), to, junk); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := dropped(); n != before+3 {
		t.Errorf("3 datagrams to the VXLAN port from untrusted h3: drop counter %d → %d, want +3", before, n)
	}

	// Fallback: close the VXLAN port under a running transfer.
	s, err := testbed.StartStream(c1, c2, 5017, 32<<10, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	b.BlockUDPPort(vxlanPort)
	took, err := h1.WaitDatapath("h2", "userspace wireguard", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("h1 → h2 back on WireGuard %.1fs after the block", took.Seconds())
	if _, err := h2.WaitDatapath("h1", "userspace wireguard", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	b.UnblockUDPPort()
	if took, err = h1.WaitDatapath("h2", "vxlan (trusted)", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("h1 → h2 on VXLAN again %.1fs after the unblock", took.Seconds())
	time.Sleep(time.Second)
	n, err := s.Finish(60 * time.Second)
	if err != nil {
		t.Fatalf("transfer across the switches: %v", err)
	}
	t.Logf("c1 → c2: %d bytes intact across VXLAN → WireGuard → VXLAN", n)

	// A daemon killed with -9 leaves its device; the next start replaces it.
	h2.Restart()
	if _, err := h1.WaitDatapath("h2", "vxlan (trusted)", 40*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c1.PingEventually(c2.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	// A clean stop removes the device and its filter table.
	if err := h1.Stop(); err != nil {
		t.Fatalf("h1 stop: %v", err)
	}
	if out, err := h1.Exec("ip", "link", "show", "vxweavewg0"); err == nil {
		t.Errorf("h1 stopped, but its VXLAN device is still there:\n%s", out)
	}
	if out, err := h1.Exec("nft", "list", "tables"); err != nil || strings.Contains(out, "weavewg_vx") {
		t.Errorf("h1 stopped: nft list tables: %v\n%s", err, out)
	}
}

func containsLine(out, a, b string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, a) && strings.Contains(l, b) {
			return true
		}
	}
	return false
}
