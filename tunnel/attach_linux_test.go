package tunnel

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func oneHost(t *testing.T) *testHost {
	requireNetAdmin(t)
	var secret key.Secret
	rand.Read(secret[:])
	return newTestHost(t, "h", "192.0.2.1", "10.32.0.1/12", secret)
}

func TestAttachErrors(t *testing.T) {
	h := oneHost(t)
	h.start(t)
	c := newNetns(t, "c")
	ip := netip.MustParsePrefix("10.32.1.1/12")

	_, err := h.tun.Attach(AttachSpec{Netns: "/var/run/netns/wwgt-does-not-exist", IP: ip})
	if err == nil || !strings.Contains(err.Error(), "attach: namespace /var/run/netns/wwgt-does-not-exist: no such file") {
		t.Errorf("missing namespace: err = %v", err)
	}
	if _, err := h.tun.Attach(AttachSpec{Netns: c.path}); err == nil {
		t.Error("attach without address succeeded")
	}
	a, err := h.tun.Attach(AttachSpec{Netns: c.path, IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.tun.Attach(AttachSpec{Netns: c.path, IP: netip.MustParsePrefix("10.32.1.2/12")})
	if err == nil || !strings.Contains(err.Error(), "already has an interface ethwe0") {
		t.Errorf("second attach: err = %v", err)
	}
	// The namespace got its interface with the address, MTU and lo up.
	out := run(t, "ip", "-n", c.name, "-o", "addr", "show", "dev", "ethwe0")
	if !strings.Contains(out, "10.32.1.1/12") {
		t.Errorf("ethwe0 addresses: %s", out)
	}
	out = run(t, "ip", "-n", c.name, "-o", "link", "show")
	if !strings.Contains(out, "ethwe0@") || !strings.Contains(out, "mtu 1420") || !strings.Contains(out, "lo: <LOOPBACK,UP,LOWER_UP>") {
		t.Errorf("links in the namespace: %s", out)
	}
	out = run(t, "ip", "-n", h.ns.name, "-o", "link", "show", a.HostVeth)
	if !strings.Contains(out, "master weavewg") || !strings.Contains(out, "mtu 1420") || !strings.Contains(out, "state UP") {
		t.Errorf("host veth: %s", out)
	}

	if err := h.tun.Detach(a); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "-n", c.name, "link", "show", "ethwe0").Run(); err == nil {
		t.Error("ethwe0 still exists after Detach")
	}
	if err := h.tun.Detach(a); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if err := h.tun.Adopt(a); err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Errorf("Adopt after Detach: err = %v", err)
	}
	// And it can be attached again.
	if _, err := h.tun.Attach(AttachSpec{Netns: c.path, IP: ip, IfName: "ethwe1"}); err != nil {
		t.Errorf("attach again as ethwe1: %v", err)
	}
}

// A restart: the Tunnel closes (or dies) with a container attached; the next
// one adopts the bridge a kill -9 left, and the container's veth.
func TestRestartAdopt(t *testing.T) {
	a, b := twoHosts(t)
	ca, cb := newNetns(t, "ca"), newNetns(t, "cb")
	att, err := a.tun.Attach(AttachSpec{Netns: ca.path, IP: netip.MustParsePrefix("10.32.1.1/12")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.tun.Attach(AttachSpec{Netns: cb.path, IP: netip.MustParsePrefix("10.32.2.1/12")}); err != nil {
		t.Fatal(err)
	}
	if out, err := ping(ca, "10.32.2.1"); err != nil {
		t.Fatalf("before restart: %v\n%s", err, out)
	}
	if err := a.tun.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.tun.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := exec.Command("ip", "-n", a.ns.name, "link", "show", "weavewg").Run(); err == nil {
		t.Error("bridge still there after Close")
	}
	if err := exec.Command("ip", "-n", a.ns.name, "link", "show", att.HostVeth).Run(); err != nil {
		t.Error("host veth gone after Close; it must stay for Adopt")
	}
	// What a kill -9 leaves: the bridge, with an address of another run.
	run(t, "ip", "-n", a.ns.name, "link", "add", "weavewg", "type", "bridge")
	run(t, "ip", "-n", a.ns.name, "addr", "add", "10.99.0.1/16", "dev", "weavewg")

	a.start(t)
	if err := a.tun.Adopt(att); err != nil {
		t.Fatal(err)
	}
	if err := a.tun.SetPeers([]PeerConfig{b.peerConfig("10.32.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	out := run(t, "ip", "-n", a.ns.name, "-o", "-4", "addr", "show", "dev", "weavewg")
	if strings.Contains(out, "10.99.0.1") || !strings.Contains(out, "10.32.0.1/12") {
		t.Errorf("adopted bridge addresses: %s", out)
	}
	if out, err := ping(ca, "10.32.2.1"); err != nil {
		t.Fatalf("after restart: %v\n%s\n%s", err, out, dump(a, b))
	}
	bad := att
	bad.Netns = "/var/run/netns/wwgt-does-not-exist"
	if err := a.tun.Adopt(bad); err == nil {
		t.Error("Adopt with a missing namespace succeeded")
	}
}

// SetPeers removes peers and their routes, puts back a route deleted behind
// its back, and refuses routes that would cover the bridge's subnet.
func TestSetPeersRoutes(t *testing.T) {
	a, b := twoHosts(t)
	routes := func() string {
		return run(t, "ip", "-n", a.ns.name, "route", "show", "proto", "87")
	}
	if r := routes(); !strings.Contains(r, "10.32.0.2 dev weavewg0") || !strings.Contains(r, "10.32.2.0/24 dev weavewg0") || !strings.Contains(r, "src 10.32.0.1") {
		t.Fatalf("routes: %s", r)
	}
	run(t, "ip", "-n", a.ns.name, "route", "del", "10.32.2.0/24")
	if err := a.tun.SetPeers([]PeerConfig{b.peerConfig("10.32.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if r := routes(); !strings.Contains(r, "10.32.2.0/24 dev weavewg0") {
		t.Errorf("deleted route not restored: %s", r)
	}
	if err := a.tun.SetPeers([]PeerConfig{b.peerConfig("10.32.0.0/12", "0.0.0.0/0", "10.32.3.0/24")}); err != nil {
		t.Fatal(err)
	}
	r := routes()
	if strings.Contains(r, "10.32.2.0/24") || !strings.Contains(r, "10.32.3.0/24") || strings.Contains(r, "default") || strings.Contains(r, "10.32.0.0/12") {
		t.Errorf("routes: %s", r)
	}
	if out := run(t, "ip", "-n", a.ns.name, "route", "show", "10.32.0.0/12"); !strings.Contains(out, "dev weavewg ") {
		t.Errorf("connected route of the bridge: %s", out)
	}
	if err := a.tun.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if r := routes(); r != "" {
		t.Errorf("routes after SetPeers(nil): %s", r)
	}
	if n := len(a.tun.PeerStats()); n != 0 {
		t.Errorf("%d WireGuard peers after SetPeers(nil)", n)
	}
}

// A New that fails (here: the UDP port is taken) leaves nothing behind.
func TestNewFailureCleansUp(t *testing.T) {
	h := oneHost(t)
	h.start(t)
	cfg := h.cfg
	cfg.Iface, cfg.Bridge = "weavewg9", "weavewgbr9"
	var err error
	if nerr := inNetns(h.ns, func() { _, err = New(cfg) }); nerr != nil {
		t.Fatal(nerr)
	}
	if err == nil || !strings.Contains(err.Error(), "6783") {
		t.Fatalf("New on a taken port: err = %v", err)
	}
	out := run(t, "ip", "-n", h.ns.name, "-o", "link", "show")
	if strings.Contains(out, "weavewg9") || strings.Contains(out, "weavewgbr9") {
		t.Errorf("failed New left links behind:\n%s", out)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New with an empty Config succeeded")
	}
}

// Close stops every goroutine the Tunnel and wireguard-go started.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	h := oneHost(t)
	before := runtime.NumGoroutine()
	h.start(t)
	if err := h.tun.SetPeers([]PeerConfig{{Key: testKey(7), Endpoint: netip.MustParseAddrPort("192.0.2.9:6783"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.32.9.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	if err := h.tun.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := h.tun.SetPeers(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("SetPeers after Close: %v, want ErrClosed", err)
	}
}

// The control methods may be called from many goroutines at once.
func TestConcurrentControl(t *testing.T) {
	a, b := twoHosts(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				extra := fmt.Sprintf("10.32.%d.0/24", 100+(i*20+j)%50)
				if err := a.tun.SetPeers([]PeerConfig{b.peerConfig("10.32.2.0/24", extra)}); err != nil {
					t.Error(err)
					return
				}
				a.tun.PeerStats()
				a.tun.Counters()
			}
		}()
	}
	wg.Wait()
}
