package tunnel

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weavewg/weavewg/types/key"
)

// requireNetAdmin skips a test that needs root, /dev/net/tun and ip(8).
func requireNetAdmin(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, a TUN device, bridges and veths")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testNetns is one named network namespace (ip netns), deleted at cleanup.
type testNetns struct {
	name string
	path string
	h    netns.NsHandle
}

// newNetns makes a namespace with a unique name: other tests may run on this
// machine at the same time.
func newNetns(t *testing.T, role string) *testNetns {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	name := "wwgt-" + hex.EncodeToString(b[:]) + "-" + role
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return &testNetns{name: name, path: "/var/run/netns/" + name, h: h}
}

// inNetns runs f on a thread in ns. The goroutine ends with its thread
// locked, so the runtime retires the thread and its namespace never leaks
// into other goroutines.
func inNetns(ns *testNetns, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns.h); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

// testLogger logs to t until the test ends; wireguard-go's goroutines may
// log a line after that, which is then dropped.
func testLogger(t *testing.T, prefix string) *slog.Logger {
	w := &testWriter{t: t, prefix: prefix}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu     sync.Mutex
	t      *testing.T
	prefix string
	done   bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(w.prefix + string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

type testHost struct {
	ns     *testNetns
	priv   key.Private
	under  netip.Addr // underlay address
	hostIP netip.Prefix
	cfg    Config
	tun    *Tunnel
}

func newTestHost(t *testing.T, role string, under, hostIP string, secret key.Secret) *testHost {
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	h := &testHost{ns: newNetns(t, role), priv: priv, under: netip.MustParseAddr(under), hostIP: netip.MustParsePrefix(hostIP)}
	h.cfg = Config{
		Private: priv, Secret: secret, Port: 6783, Iface: "weavewg0", Bridge: "weavewg",
		MTU: 1420, HostIP: h.hostIP, Logger: testLogger(t, role+": "),
	}
	return h
}

func (h *testHost) start(t *testing.T) {
	t.Helper()
	var err error
	if nerr := inNetns(h.ns, func() { h.tun, err = New(h.cfg) }); nerr != nil {
		t.Fatal(nerr)
	}
	if err != nil {
		t.Fatalf("New in %s: %v", h.ns.name, err)
	}
	tn := h.tun
	t.Cleanup(func() { tn.Close() })
}

func (h *testHost) peerConfig(allowed ...string) PeerConfig {
	pc := PeerConfig{Key: h.priv.Public(), Endpoint: netip.AddrPortFrom(h.under, 6783)}
	pc.AllowedIPs = append(pc.AllowedIPs, netip.PrefixFrom(h.hostIP.Addr(), 32))
	for _, a := range allowed {
		pc.AllowedIPs = append(pc.AllowedIPs, netip.MustParsePrefix(a))
	}
	return pc
}

// twoHosts makes two namespaces joined by a veth on 192.0.2.0/24, each with
// a Tunnel, peered with each other.
func twoHosts(t *testing.T) (a, b *testHost) {
	requireNetAdmin(t)
	var secret key.Secret
	rand.Read(secret[:])
	a = newTestHost(t, "a", "192.0.2.1", "10.32.0.1/12", secret)
	b = newTestHost(t, "b", "192.0.2.2", "10.32.0.2/12", secret)
	run(t, "ip", "-n", a.ns.name, "link", "add", "under0", "type", "veth", "peer", "name", "under0", "netns", b.ns.name)
	for _, h := range []*testHost{a, b} {
		run(t, "ip", "-n", h.ns.name, "addr", "add", h.under.String()+"/24", "dev", "under0")
		run(t, "ip", "-n", h.ns.name, "link", "set", "under0", "up")
	}
	a.start(t)
	b.start(t)
	if err := a.tun.SetPeers([]PeerConfig{b.peerConfig("10.32.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := b.tun.SetPeers([]PeerConfig{a.peerConfig("10.32.1.0/24")}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// ping pings to from the namespace from, three times, after waiting up to
// 15 s for a first answer: when both peers start a handshake at the same
// moment (both SetPeers at once), WireGuard resolves the collision only at
// the next retry, 5 s later.
func ping(from *testNetns, to string) (string, error) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if exec.Command("ip", "netns", "exec", from.name, "ping", "-c", "1", "-W", "1", to).Run() == nil {
			break
		}
	}
	out, err := exec.Command("ip", "netns", "exec", from.name, "ping", "-c", "3", "-i", "0.2", "-W", "2", to).CombinedOutput()
	return string(out), err
}

func TestTwoHostsPing(t *testing.T) {
	a, b := twoHosts(t)
	ca, cb := newNetns(t, "ca"), newNetns(t, "cb")
	attA, err := a.tun.Attach(AttachSpec{Netns: ca.path, IP: netip.MustParsePrefix("10.32.1.1/12")})
	if err != nil {
		t.Fatal(err)
	}
	if attA.IfName != DefaultIfName || attA.HostVeth != HostVethName(ca.path, DefaultIfName) || attA.MTU != 1420 {
		t.Errorf("Attached = %+v", attA)
	}
	if _, err := b.tun.Attach(AttachSpec{Netns: cb.path, IP: netip.MustParsePrefix("10.32.2.1/12")}); err != nil {
		t.Fatal(err)
	}

	if out, err := ping(ca, "10.32.2.1"); err != nil {
		t.Fatalf("container a → container b: %v\n%s\n%s", err, out, dump(a, b))
	}
	if out, err := ping(cb, "10.32.1.1"); err != nil {
		t.Fatalf("container b → container a: %v\n%s", err, out)
	}
	if out, err := ping(ca, "10.32.0.2"); err != nil {
		t.Errorf("container a → host b: %v\n%s", err, out)
	}
	if out, err := ping(ca, "10.32.0.1"); err != nil {
		t.Errorf("container a → its own host: %v\n%s", err, out)
	}

	st := a.tun.PeerStats()[b.priv.Public()]
	if st.LastHandshake.IsZero() || st.RxBytes == 0 || st.TxBytes == 0 || st.Endpoint != netip.MustParseAddrPort("192.0.2.2:6783") {
		t.Errorf("PeerStats of b on a = %+v", st)
	}
	if c := a.tun.Counters(); c[CounterUDPWireGuard] == 0 {
		t.Errorf("Counters = %v, want some %s", c, CounterUDPWireGuard)
	}

	// SetPeers again with the same peers changes nothing.
	if err := a.tun.SetPeers([]PeerConfig{b.peerConfig("10.32.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if n, err := a.tun.syncRoutes(map[netip.Prefix]bool{netip.MustParsePrefix("10.32.0.2/32"): true, netip.MustParsePrefix("10.32.2.0/24"): true}); n != 0 || err != nil {
		t.Errorf("routes after repeated SetPeers: %d changes, %v; want 0, nil", n, err)
	}
}

// dump shows the routes and links of both hosts, for a failing test.
func dump(hs ...*testHost) string {
	var b strings.Builder
	for _, h := range hs {
		for _, args := range [][]string{{"route"}, {"-br", "addr"}, {"neigh"}} {
			out, _ := exec.Command("ip", append([]string{"-n", h.ns.name}, args...)...).CombinedOutput()
			fmt.Fprintf(&b, "%s: ip %s\n%s", h.ns.name, strings.Join(args, " "), out)
		}
		fmt.Fprintf(&b, "%s: counters %v\n", h.ns.name, h.tun.Counters())
	}
	return b.String()
}

// STUN, relay and junk datagrams to the WireGuard port are sorted out and
// counted; WireGuard keeps working.
func TestSharedPortSorting(t *testing.T) {
	a, b := twoHosts(t)
	var got sync.WaitGroup
	got.Add(1)
	var once sync.Once
	a.tun.SetSTUNHandler(func(pkt []byte, src netip.AddrPort) {
		if src.Addr() == b.under {
			once.Do(got.Done)
		}
	})
	var sendErr error
	if err := inNetns(b.ns, func() {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.under, 6783)))
		if err != nil {
			sendErr = err
			return
		}
		defer c.Close()
		for _, p := range [][]byte{stunMsg(1, 0), relayMsg(40), []byte("junk")} {
			if _, err := c.Write(p); err != nil {
				sendErr = err
			}
		}
	}); err != nil || sendErr != nil {
		t.Fatal(err, sendErr)
	}
	waitFor(t, "STUN handler called", func() bool {
		c := a.tun.Counters()
		return c[CounterUDPSTUN] == 1 && c[CounterUDPRelay] == 1 && c[CounterUDPJunkDropped] == 1
	})
	got.Wait()
	// The relay frame comes from a port that is no member's address: the
	// relay code drops it as from an unknown source.
	if c := a.tun.Counters(); c["udp_relay_dropped_unknown_source"] != 1 || c[CounterUDPSTUNUnhandled] != 0 {
		t.Errorf("Counters = %v", c)
	}
	// The tunnel still works, from the hosts themselves.
	if out, err := ping(b.ns, "10.32.0.1"); err != nil {
		t.Errorf("host b → host a: %v\n%s", err, out)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
