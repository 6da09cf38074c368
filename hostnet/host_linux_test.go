package hostnet

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/internal/netnstest"
	"github.com/weavewg/weavewg/internal/rpfilter"
)

var (
	run      = netnstest.Run
	newNetns = netnstest.New
)

// testHost is a namespace with a TUN named weavewg0 (made with ip tuntap:
// the Host needs one to exist, not to carry packets) and a Host around it.
type testHost struct {
	ns   *netnstest.NS
	cfg  Config
	host *Host
}

func oneHost(t *testing.T) *testHost {
	netnstest.RequireNetAdmin(t)
	h := &testHost{ns: newNetns(t, "h")}
	run(t, "ip", "-n", h.ns.Name, "tuntap", "add", "weavewg0", "mode", "tun")
	run(t, "ip", "-n", h.ns.Name, "link", "set", "weavewg0", "up")
	h.cfg = Config{Bridge: "weavewg", TUN: "weavewg0", MTU: 1420, HostIP: netip.MustParsePrefix("10.32.0.1/12"),
		MACSeed: []byte("test"), Logger: netnstest.Logger(t, "h: ")}
	return h
}

func (h *testHost) start(t *testing.T) {
	t.Helper()
	var err error
	if nerr := netnstest.Do(h.ns, func() { h.host, err = New(h.cfg) }); nerr != nil {
		t.Fatal(nerr)
	}
	if err != nil {
		t.Fatalf("New in %s: %v", h.ns.Name, err)
	}
	hn := h.host
	t.Cleanup(func() { hn.Close() })
}

// hiddenHostWithContainer starts a host whose overlay is 10.32.0.0/12 and
// attaches one container (c1) at 10.32.1.1: the hidden-host tests' setup.
func hiddenHostWithContainer(t *testing.T) (*testHost, *netnstest.NS, Attached) {
	t.Helper()
	h := oneHost(t)
	h.cfg.Overlay = netipPrefix("10.32.0.0/12")
	h.start(t)
	c1 := newNetns(t, "c1")
	att, err := h.host.Attach(AttachSpec{Netns: c1.Path, IP: netipPrefix("10.32.1.1/12")})
	if err != nil {
		t.Fatal(err)
	}
	return h, c1, att
}

func TestAttachErrors(t *testing.T) {
	h := oneHost(t)
	h.start(t)
	c := newNetns(t, "c")
	ip := netip.MustParsePrefix("10.32.1.1/12")

	_, err := h.host.Attach(AttachSpec{Netns: "/var/run/netns/wwgt-does-not-exist", IP: ip})
	if err == nil || !strings.Contains(err.Error(), "attach: namespace /var/run/netns/wwgt-does-not-exist: no such file") {
		t.Errorf("missing namespace: err = %v", err)
	}
	if _, err := h.host.Attach(AttachSpec{Netns: c.Path}); err == nil {
		t.Error("attach without address succeeded")
	}
	a, err := h.host.Attach(AttachSpec{Netns: c.Path, IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.host.Attach(AttachSpec{Netns: c.Path, IP: netip.MustParsePrefix("10.32.1.2/12")})
	if err == nil || !strings.Contains(err.Error(), "already has an interface ethwe0") {
		t.Errorf("second attach: err = %v", err)
	}
	// The namespace got its interface with the address, MTU and lo up.
	out := run(t, "ip", "-n", c.Name, "-o", "addr", "show", "dev", "ethwe0")
	if !strings.Contains(out, "10.32.1.1/12") {
		t.Errorf("ethwe0 addresses: %s", out)
	}
	out = run(t, "ip", "-n", c.Name, "-o", "link", "show")
	if !strings.Contains(out, "ethwe0@") || !strings.Contains(out, "mtu 1420") || !strings.Contains(out, "lo: <LOOPBACK,UP,LOWER_UP>") {
		t.Errorf("links in the namespace: %s", out)
	}
	// Multicast and the limited broadcast leave through ethwe0 (a
	// container has no other route for them).
	for _, dst := range []string{"239.1.1.1", "224.0.0.251", "255.255.255.255"} {
		out = run(t, "ip", "-n", c.Name, "route", "get", dst)
		if !strings.Contains(out, "dev ethwe0") {
			t.Errorf("route to %s in the namespace: %s", dst, out)
		}
	}
	out = run(t, "ip", "-n", h.ns.Name, "-o", "link", "show", a.HostVeth)
	if !strings.Contains(out, "master weavewg") || !strings.Contains(out, "mtu 1420") || !strings.Contains(out, "state UP") {
		t.Errorf("host veth: %s", out)
	}

	if err := h.host.Detach(a); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "-n", c.Name, "link", "show", "ethwe0").Run(); err == nil {
		t.Error("ethwe0 still exists after Detach")
	}
	if err := h.host.Detach(a); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if err := h.host.Adopt(a); err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Errorf("Adopt after Detach: err = %v", err)
	}
	// And it can be attached again.
	if _, err := h.host.Attach(AttachSpec{Netns: c.Path, IP: ip, IfName: "ethwe1"}); err != nil {
		t.Errorf("attach again as ethwe1: %v", err)
	}
}

// SetRoutes routes exactly the prefixes inside the overlay into the TUN,
// puts back a route deleted behind its back, changes nothing when called
// again with the same prefixes, and refuses routes that would cover the
// bridge's subnet or lie outside the overlay.
func TestSetRoutes(t *testing.T) {
	h := oneHost(t)
	h.start(t)
	routes := func() string {
		return run(t, "ip", "-n", h.ns.Name, "route", "show", "proto", "87")
	}
	set := func(prefixes ...string) {
		t.Helper()
		var ps []netip.Prefix
		for _, p := range prefixes {
			ps = append(ps, netip.MustParsePrefix(p))
		}
		if err := h.host.SetRoutes(ps); err != nil {
			t.Fatal(err)
		}
	}
	set("10.32.0.2/32", "10.32.2.0/24")
	if r := routes(); !strings.Contains(r, "10.32.0.2 dev weavewg0") || !strings.Contains(r, "10.32.2.0/24 dev weavewg0") || !strings.Contains(r, "src 10.32.0.1") {
		t.Fatalf("routes: %s", r)
	}
	if n, err := h.host.syncRoutes(map[netip.Prefix]int{netip.MustParsePrefix("10.32.0.2/32"): 0, netip.MustParsePrefix("10.32.2.0/24"): 0}); n != 0 || err != nil {
		t.Errorf("routes after the same set again: %d changes, %v; want 0, nil", n, err)
	}
	run(t, "ip", "-n", h.ns.Name, "route", "del", "10.32.2.0/24")
	set("10.32.0.2/32", "10.32.2.0/24")
	if r := routes(); !strings.Contains(r, "10.32.2.0/24 dev weavewg0") {
		t.Errorf("deleted route not restored: %s", r)
	}
	set("10.32.0.0/12", "0.0.0.0/0", "10.32.3.0/24")
	r := routes()
	if strings.Contains(r, "10.32.2.0/24") || !strings.Contains(r, "10.32.3.0/24") || strings.Contains(r, "default") || strings.Contains(r, "10.32.0.0/12") {
		t.Errorf("routes: %s", r)
	}
	if out := run(t, "ip", "-n", h.ns.Name, "route", "show", "10.32.0.0/12"); !strings.Contains(out, "dev weavewg ") {
		t.Errorf("connected route of the bridge: %s", out)
	}
	set()
	if r := routes(); r != "" {
		t.Errorf("routes after SetRoutes(nil): %s", r)
	}
}

// A New that fails (here: there is no such TUN) leaves nothing behind, and
// Close removes the bridge and the routes.
func TestNewFailureAndClose(t *testing.T) {
	h := oneHost(t)
	cfg := h.cfg
	cfg.TUN, cfg.Bridge = "weavewg9", "weavewgbr9"
	var err error
	if nerr := netnstest.Do(h.ns, func() { _, err = New(cfg) }); nerr != nil {
		t.Fatal(nerr)
	}
	if err == nil || !strings.Contains(err.Error(), "weavewg9") {
		t.Fatalf("New without a TUN: err = %v", err)
	}
	if out := run(t, "ip", "-n", h.ns.Name, "-o", "link", "show"); strings.Contains(out, "weavewgbr9") {
		t.Errorf("failed New left links behind:\n%s", out)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New with an empty Config succeeded")
	}
	h.start(t)
	if err := h.host.SetRoutes([]netip.Prefix{netip.MustParsePrefix("10.32.5.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := h.host.Close(); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "-n", h.ns.Name, "link", "show", "weavewg").Run(); err == nil {
		t.Error("bridge still there after Close")
	}
	if r := run(t, "ip", "-n", h.ns.Name, "route", "show", "proto", "87"); r != "" {
		t.Errorf("routes after Close: %s", r)
	}
	if err := h.host.SetRoutes(nil); err == nil {
		t.Error("SetRoutes after Close succeeded")
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("/var/run/netns/x", "ethwe0")
	if len(a) > maxIfNameLen || !strings.HasPrefix(a, "vethwe") {
		t.Errorf("HostVethName = %q", a)
	}
	if a != HostVethName("/var/run/netns/x", "ethwe0") {
		t.Error("HostVethName is not deterministic")
	}
	if a == HostVethName("/var/run/netns/y", "ethwe0") || a == HostVethName("/var/run/netns/x", "ethwe1") {
		t.Error("HostVethName collides for different namespaces or interfaces")
	}
}

func netipPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// An address attached again on a new veth (a container restarted) is
// reachable from the host at once, not once the old MAC address expires
// from the neighbor cache.
func TestReattachSameAddress(t *testing.T) {
	h := oneHost(t)
	h.start(t)
	ping := func() error {
		return exec.Command("ip", "netns", "exec", h.ns.Name, "ping", "-c", "1", "-W", "1", "10.32.1.1").Run()
	}
	c1 := newNetns(t, "c1")
	a, err := h.host.Attach(AttachSpec{Netns: c1.Path, IP: netipPrefix("10.32.1.1/12")})
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Fatalf("host → first container: %v", err)
	}
	if out := run(t, "ip", "-n", h.ns.Name, "neigh", "show", "10.32.1.1"); !strings.Contains(out, "REACHABLE") {
		t.Fatalf("no REACHABLE neighbor entry after the ping; the test tests nothing: %q", out)
	}
	if err := h.host.Detach(a); err != nil {
		t.Fatal(err)
	}
	c2 := newNetns(t, "c2")
	if _, err := h.host.Attach(AttachSpec{Netns: c2.Path, IP: netipPrefix("10.32.1.1/12")}); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Errorf("host → the new container with the same address: %v\n%s", err, run(t, "ip", "-n", h.ns.Name, "neigh", "show"))
	}
}

// The bridge and the TUN are never filtered strictly by reverse path (a
// peer's packets would be dropped while its prefix is not yet routed into
// the TUN), and get no filtering the host does not ask for (loose costs
// a FIB lookup per packet).
func TestReversePathFilterNeverStrict(t *testing.T) {
	for _, c := range []struct{ all, want int }{{rpfilter.Off, rpfilter.Off}, {rpfilter.Strict, rpfilter.Loose}, {rpfilter.Loose, rpfilter.Loose}} {
		t.Run(fmt.Sprintf("all=%d", c.all), func(t *testing.T) {
			h := oneHost(t)
			run(t, "ip", "netns", "exec", h.ns.Name, "sysctl", "-q", "-w", fmt.Sprintf("net.ipv4.conf.all.rp_filter=%d", c.all))
			h.start(t)
			for _, dev := range []string{h.cfg.Bridge, h.cfg.TUN} {
				var got int
				var err error
				if nerr := netnstest.Do(h.ns, func() { got, err = rpfilter.Effective(dev) }); nerr != nil {
					t.Fatal(nerr)
				}
				if err != nil || got != c.want {
					t.Errorf("%s: effective rp_filter %d, %v; want %d", dev, got, err, c.want)
				}
			}
		})
	}
}
