package vxlan

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/internal/netnstest"
	"github.com/weavewg/weavewg/types/key"
)

// twoPlanes makes two namespaces on one veth (192.0.2.1 and .2), each
// with its host address on lo and a Plane trusting 192.0.2.0/24.
func twoPlanes(t *testing.T) (a, b *Plane, nsA, nsB *netnstest.NS, kA, kB key.Public) {
	netnstest.RequireNetAdmin(t)
	nsA, nsB = netnstest.New(t, "a"), netnstest.New(t, "b")
	netnstest.Run(t, "ip", "-n", nsA.Name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nsB.Name)
	for i, ns := range []*netnstest.NS{nsA, nsB} {
		n := string(rune('1' + i))
		netnstest.Run(t, "ip", "-n", ns.Name, "addr", "add", "192.0.2."+n+"/24", "dev", "eth0")
		netnstest.Run(t, "ip", "-n", ns.Name, "link", "set", "eth0", "up")
		netnstest.Run(t, "ip", "-n", ns.Name, "addr", "add", "10.32.0."+n+"/32", "dev", "lo")
	}
	kA[0], kB[0] = 1, 2
	secret := key.Secret{7}
	mk := func(ns *netnstest.NS, self key.Public, host string) *Plane {
		var p *Plane
		var err error
		cfg := Config{Name: "vxweavewg0", Port: 6784, VNI: VNIOf(secret), MTU: 1420, Self: self, Secret: secret,
			Trusted: Trusted{netip.MustParsePrefix("192.0.2.0/24")}, HostIP: netip.MustParseAddr(host),
			Logger: netnstest.Logger(t, ns.Name+": ")}
		if nerr := netnstest.Do(ns, func() { p, err = New(cfg) }); nerr != nil {
			t.Fatal(nerr)
		}
		if err != nil {
			t.Fatalf("New in %s: %v", ns.Name, err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	return mk(nsA, kA, "10.32.0.1"), mk(nsB, kB, "10.32.0.2"), nsA, nsB, kA, kB
}

// TestPlaneCarriesAndFallsBack: two planes probe each other through their
// devices, route each other's prefixes into them once the probes answer,
// carry a ping, and take the routes away when the peer goes.
func TestPlaneCarriesAndFallsBack(t *testing.T) {
	a, b, nsA, _, kA, kB := twoPlanes(t)
	peerB := Peer{Key: kB, Underlay: netip.MustParseAddr("192.0.2.2"), HostIP: netip.MustParseAddr("10.32.0.2"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32"), netip.MustParsePrefix("10.40.0.0/14")}}
	peerA := Peer{Key: kA, Underlay: netip.MustParseAddr("192.0.2.1"), HostIP: netip.MustParseAddr("10.32.0.1"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.1/32")}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		ua, err := a.SetPeers([]Peer{peerB})
		if err != nil {
			t.Fatal(err)
		}
		ub, err := b.SetPeers([]Peer{peerA})
		if err != nil {
			t.Fatal(err)
		}
		if ua[kB] && ub[kA] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not on VXLAN after 15 s: a %v b %v; counters a %v b %v", ua, ub, a.Counters(), b.Counters())
		}
		time.Sleep(300 * time.Millisecond)
	}
	if s := a.Stats()[kB]; !s.Trusted || !s.Using || s.RTT <= 0 || s.Endpoint.String() != "192.0.2.2:6784" {
		t.Errorf("a's stats of b: %+v", s)
	}
	routes := netnstest.Run(t, "ip", "-n", nsA.Name, "route", "show", "dev", "vxweavewg0")
	if !strings.Contains(routes, "10.40.0.0/14 via 10.32.0.2") || !strings.Contains(routes, "onlink") {
		t.Errorf("a's routes into the device:\n%s", routes)
	}
	if out, err := exec.Command("ip", "netns", "exec", nsA.Name, "ping", "-c", "1", "-W", "2", "-I", "10.32.0.1", "10.32.0.2").CombinedOutput(); err != nil {
		t.Fatalf("ping over VXLAN: %v\n%s", err, out)
	}
	// The peer leaves: its routes go after PruneRoutes.
	if _, err := a.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if err := a.PruneRoutes(); err != nil {
		t.Fatal(err)
	}
	if routes := netnstest.Run(t, "ip", "-n", nsA.Name, "route", "show", "dev", "vxweavewg0"); strings.Contains(routes, "10.40.0.0/14") {
		t.Errorf("routes of a departed peer left:\n%s", routes)
	}
	if fdb := netnstest.Run(t, "bridge", "-n", nsA.Name, "fdb", "show", "dev", "vxweavewg0"); strings.Contains(fdb, "192.0.2.2") {
		t.Errorf("FDB entry of a departed peer left:\n%s", fdb)
	}
	// Close removes the device and the filter table.
	a.Close()
	if out, err := exec.Command("ip", "-n", nsA.Name, "link", "show", "vxweavewg0").CombinedOutput(); err == nil {
		t.Errorf("device left after Close:\n%s", out)
	}
	if out := netnstest.Run(t, "ip", "netns", "exec", nsA.Name, "nft", "list", "tables"); strings.Contains(out, "weavewg_vxweavewg0") {
		t.Errorf("filter table left after Close:\n%s", out)
	}
}

// TestPlaneUntrustedPeerNotProgrammed: a peer outside the trusted subnets
// gets no FDB entry, is never probed and never routed.
func TestPlaneUntrustedPeerNotProgrammed(t *testing.T) {
	a, _, nsA, _, _, kB := twoPlanes(t)
	outside := Peer{Key: kB, Underlay: netip.MustParseAddr("198.51.100.2"), HostIP: netip.MustParseAddr("10.32.0.2"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}}
	netnstest.Run(t, "ip", "-n", nsA.Name, "route", "add", "198.51.100.0/24", "dev", "eth0")
	for i := 0; i < 4; i++ {
		if u, err := a.SetPeers([]Peer{outside}); err != nil || u[kB] {
			t.Fatalf("untrusted peer: using %v err %v", u, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if s := a.Stats()[kB]; s.Trusted || s.Using {
		t.Errorf("stats of an untrusted peer: %+v", s)
	}
	if n := a.Counters()[CounterProbesSent]; n != 0 {
		t.Errorf("%d probes sent to an untrusted peer", n)
	}
	if fdb := netnstest.Run(t, "bridge", "-n", nsA.Name, "fdb", "show", "dev", "vxweavewg0"); strings.Contains(fdb, "198.51.100.2") {
		t.Errorf("FDB entry for an untrusted peer:\n%s", fdb)
	}
}

// TestPlaneFilterPutBack: a firewall reload (`nft flush ruleset`) removes
// the filter table, which alone keeps VXLAN datagrams from outside the
// trusted subnets out of the device; the plane puts it back, drop rule and
// all, and counts it.
func TestPlaneFilterPutBack(t *testing.T) {
	a, _, nsA, _, _, _ := twoPlanes(t)
	netnstest.Run(t, "ip", "netns", "exec", nsA.Name, "nft", "flush", "ruleset")
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := exec.Command("ip", "netns", "exec", nsA.Name, "nft", "list", "table", "ip", "weavewg_vxweavewg0").CombinedOutput()
		if strings.Contains(string(out), "udp dport 6784 ip saddr 192.0.2.0/24 accept") && strings.Contains(string(out), "udp dport 6784 counter") &&
			strings.Contains(string(out), "drop") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("filter table not put back after a flush:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := a.Counters()[CounterFilterRestored]; n == 0 {
		t.Errorf("%s = 0 after putting the table back", CounterFilterRestored)
	}
}
