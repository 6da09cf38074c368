package hostnet

import (
	"net/netip"
	"strings"
	"testing"
)

// A host started without an address gets one later, a new one replaces
// it (the old goes, routes follow), and exposures put their /32s on the
// bridge and their accept rules in overlay_in; hiding removes both.
func TestHostIPLaterAndExposures(t *testing.T) {
	h := oneHost(t)
	h.cfg.HostIP = netip.Prefix{}
	h.cfg.Overlay = netip.MustParsePrefix("10.32.0.0/12")
	h.start(t)
	addrs := func() string { return run(t, "ip", "-n", h.ns.Name, "-4", "-o", "addr", "show", "dev", "weavewg") }
	if out := addrs(); strings.Contains(out, "inet ") {
		t.Fatalf("bridge has an address before SetHostIP: %s", out)
	}
	if err := h.host.SetHostIP(netip.MustParsePrefix("10.32.0.1/12")); err != nil {
		t.Fatal(err)
	}
	if err := h.host.SetRoutes([]netip.Prefix{netip.MustParsePrefix("10.40.0.0/13")}); err != nil {
		t.Fatal(err)
	}
	if err := h.host.SetHostIP(netip.MustParsePrefix("10.32.0.9/12")); err != nil {
		t.Fatal(err)
	}
	if out := addrs(); !strings.Contains(out, "10.32.0.9/12") || strings.Contains(out, "10.32.0.1/") {
		t.Fatalf("bridge addresses after a new host address: %s", out)
	}
	if err := h.host.SetRoutes([]netip.Prefix{netip.MustParsePrefix("10.40.0.0/13")}); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "ip", "-n", h.ns.Name, "route", "show", "dev", "weavewg0"); !strings.Contains(out, "10.40.0.0/13") || !strings.Contains(out, "src 10.32.0.9") {
		t.Fatalf("TUN routes after a new host address: %s", out)
	}
	ruleset := func() string {
		return run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "table", "inet", "weavewg_weavewg0")
	}
	if out := ruleset(); !strings.Contains(out, "ip daddr 10.32.0.9 udp dport 53 accept") || strings.Contains(out, "ip saddr 10.") {
		t.Fatalf("hidden host's overlay_in:\n%s", out)
	}
	exp := []Exposure{
		{Addr: netip.MustParseAddr("10.32.0.9"), From: netip.MustParsePrefix("10.32.0.0/14")},
		{Addr: netip.MustParseAddr("10.36.1.1"), From: netip.MustParsePrefix("10.36.1.0/24")},
	}
	if err := h.host.SetExposed(exp); err != nil {
		t.Fatal(err)
	}
	if out := addrs(); !strings.Contains(out, "10.32.0.9/12") || !strings.Contains(out, "10.36.1.1/32") {
		t.Fatalf("bridge addresses when exposed: %s", out)
	}
	out := ruleset()
	for _, want := range []string{"ip saddr 10.32.0.0/14 ip daddr 10.32.0.9 accept", "ip saddr 10.36.1.0/24 ip daddr 10.36.1.1 accept"} {
		if !strings.Contains(out, want) {
			t.Errorf("exposed overlay_in lacks %q:\n%s", want, out)
		}
	}
	if err := h.host.SetExposed(nil); err != nil {
		t.Fatal(err)
	}
	if out := addrs(); strings.Contains(out, "10.36.1.1") || !strings.Contains(out, "10.32.0.9/12") {
		t.Fatalf("bridge addresses after hide: %s", out)
	}
	if out := ruleset(); strings.Contains(out, "ip saddr 10.") {
		t.Fatalf("overlay_in after hide:\n%s", out)
	}
}
