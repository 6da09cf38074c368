package tunnel

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/internal/netnstest"
	"github.com/weavewg/weavewg/types/key"
)

var (
	requireNetAdmin = netnstest.RequireNetAdmin
	run             = netnstest.Run
	newNetns        = netnstest.New
	inNetns         = netnstest.Do
)

type testHost struct {
	ns     *netnstest.NS
	priv   key.Private
	under  netip.Addr // underlay address
	hostIP netip.Prefix
	cfg    Config
	tun    *Tunnel
	host   *hostnet.Host // the bridge, routes and forward filter around tun
	log    *slog.Logger
}

func newTestHost(t *testing.T, role string, under, hostIP string, secret key.Secret) *testHost {
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	h := &testHost{ns: newNetns(t, role), priv: priv, under: netip.MustParseAddr(under), hostIP: netip.MustParsePrefix(hostIP)}
	h.cfg = Config{
		Private: priv, Secret: secret, Port: 6783, Iface: "weavewg0",
		MTU: 1420, Logger: netnstest.Logger(t, role+": "),
	}
	h.log = h.cfg.Logger
	return h
}

func (h *testHost) start(t *testing.T) {
	t.Helper()
	var err error
	if nerr := inNetns(h.ns, func() {
		if h.tun, err = New(h.cfg); err != nil {
			return
		}
		pub := h.priv.Public()
		h.host, err = hostnet.New(hostnet.Config{Bridge: "weavewg", TUN: h.tun.TUNName(), MTU: h.cfg.MTU,
			HostIP: h.hostIP, MACSeed: pub[:], Logger: h.log})
		if err != nil {
			h.tun.Close()
		}
	}); nerr != nil {
		t.Fatal(nerr)
	}
	if err != nil {
		t.Fatalf("New in %s: %v", h.ns.Name, err)
	}
	tn, hn := h.tun, h.host
	t.Cleanup(func() { hn.Close(); tn.Close() })
	// Exposed to the whole range, as `weavewg expose` does: these tests
	// ping the hosts' own addresses through the tunnel, and a hidden host
	// answers no ping (hostnet's overlay_in chain).
	if err := h.host.SetExposed([]hostnet.Exposure{{Addr: h.hostIP.Addr(), From: h.hostIP.Masked()}}); err != nil {
		t.Fatalf("expose in %s: %v", h.ns.Name, err)
	}
}

// setPeers sets the WireGuard peers and the routes into the TUN, as the
// daemon does.
func (h *testHost) setPeers(t *testing.T, peers ...PeerConfig) {
	t.Helper()
	if err := h.tun.SetPeers(peers); err != nil {
		t.Fatal(err)
	}
	var routes []netip.Prefix
	for _, p := range peers {
		routes = append(routes, p.AllowedIPs...)
	}
	if err := h.host.SetRoutes(routes); err != nil {
		t.Fatal(err)
	}
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
func oneHost(t *testing.T) *testHost {
	requireNetAdmin(t)
	var secret key.Secret
	rand.Read(secret[:])
	return newTestHost(t, "h", "192.0.2.1", "10.32.0.1/12", secret)
}

func twoHosts(t *testing.T) (a, b *testHost) {
	requireNetAdmin(t)
	var secret key.Secret
	rand.Read(secret[:])
	a = newTestHost(t, "a", "192.0.2.1", "10.32.0.1/12", secret)
	b = newTestHost(t, "b", "192.0.2.2", "10.32.0.2/12", secret)
	run(t, "ip", "-n", a.ns.Name, "link", "add", "under0", "type", "veth", "peer", "name", "under0", "netns", b.ns.Name)
	for _, h := range []*testHost{a, b} {
		run(t, "ip", "-n", h.ns.Name, "addr", "add", h.under.String()+"/24", "dev", "under0")
		run(t, "ip", "-n", h.ns.Name, "link", "set", "under0", "up")
	}
	a.start(t)
	b.start(t)
	a.setPeers(t, b.peerConfig("10.32.2.0/24"))
	b.setPeers(t, a.peerConfig("10.32.1.0/24"))
	return a, b
}

// ping pings to from the namespace from, three times, after waiting up to
// 15 s for a first answer: when both peers start a handshake at the same
// moment (both SetPeers at once), WireGuard resolves the collision only at
// the next retry, 5 s later.
func ping(from *netnstest.NS, to string) (string, error) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if exec.Command("ip", "netns", "exec", from.Name, "ping", "-c", "1", "-W", "1", to).Run() == nil {
			break
		}
	}
	out, err := exec.Command("ip", "netns", "exec", from.Name, "ping", "-c", "3", "-i", "0.2", "-W", "2", to).CombinedOutput()
	return string(out), err
}

func TestTwoHostsPing(t *testing.T) {
	a, b := twoHosts(t)
	ca, cb := newNetns(t, "ca"), newNetns(t, "cb")
	attA, err := a.host.Attach(hostnet.AttachSpec{Netns: ca.Path, IP: netip.MustParsePrefix("10.32.1.1/12")})
	if err != nil {
		t.Fatal(err)
	}
	if attA.IfName != hostnet.DefaultIfName || attA.HostVeth != hostnet.HostVethName(ca.Path, hostnet.DefaultIfName) || attA.MTU != 1420 {
		t.Errorf("Attached = %+v", attA)
	}
	if _, err := b.host.Attach(hostnet.AttachSpec{Netns: cb.Path, IP: netip.MustParsePrefix("10.32.2.1/12")}); err != nil {
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
}

// dump shows the routes and links of both hosts, for a failing test.
func dump(hs ...*testHost) string {
	var b strings.Builder
	for _, h := range hs {
		for _, args := range [][]string{{"route"}, {"-br", "addr"}, {"neigh"}} {
			out, _ := exec.Command("ip", append([]string{"-n", h.ns.Name}, args...)...).CombinedOutput()
			fmt.Fprintf(&b, "%s: ip %s\n%s", h.ns.Name, strings.Join(args, " "), out)
		}
		fmt.Fprintf(&b, "%s: counters %v\n", h.ns.Name, h.tun.Counters())
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
	// The three datagrams go again every 200 ms until each kind was seen:
	// wireguard-go closes and reopens the socket when the TUN comes up (its
	// Bind is rebound on every Up), and a datagram sent in that window is
	// lost, which says nothing about sorting.
	send := func() error {
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
		}); err != nil {
			return err
		}
		return sendErr
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := send(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		c := a.tun.Counters()
		if c[CounterUDPSTUN] >= 1 && c[CounterUDPRelay] >= 1 && c[CounterUDPJunkDropped] >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every kind of datagram was sorted: %v", c)
		}
	}
	got.Wait()
	// The relay frame names no peer (its IDs are zero): the relay code
	// drops it as from an unknown peer. (udp_relay also counts the hosts'
	// own MTU probes, which share the relay frame's first byte.)
	if c := a.tun.Counters(); c["udp_relay_dropped_unknown_peer"] < 1 || c["udp_relay_delivered"] != 0 || c["udp_relay_forwarded"] != 0 || c[CounterUDPSTUNUnhandled] != 0 {
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

// A restart: the Tunnel and Host close (or die) with a container attached;
// the next ones adopt the bridge a kill -9 left, and the container's veth.
func TestRestartAdopt(t *testing.T) {
	a, b := twoHosts(t)
	ca, cb := newNetns(t, "ca"), newNetns(t, "cb")
	att, err := a.host.Attach(hostnet.AttachSpec{Netns: ca.Path, IP: netip.MustParsePrefix("10.32.1.1/12")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.host.Attach(hostnet.AttachSpec{Netns: cb.Path, IP: netip.MustParsePrefix("10.32.2.1/12")}); err != nil {
		t.Fatal(err)
	}
	if out, err := ping(ca, "10.32.2.1"); err != nil {
		t.Fatalf("before restart: %v\n%s", err, out)
	}
	if err := a.host.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.host.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := a.tun.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.tun.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := exec.Command("ip", "-n", a.ns.Name, "link", "show", "weavewg").Run(); err == nil {
		t.Error("bridge still there after Close")
	}
	if err := exec.Command("ip", "-n", a.ns.Name, "link", "show", att.HostVeth).Run(); err != nil {
		t.Error("host veth gone after Close; it must stay for Adopt")
	}
	// What a kill -9 leaves: the bridge, with an address of another run.
	run(t, "ip", "-n", a.ns.Name, "link", "add", "weavewg", "type", "bridge")
	run(t, "ip", "-n", a.ns.Name, "addr", "add", "10.99.0.1/16", "dev", "weavewg")

	a.start(t)
	if err := a.host.Adopt(att); err != nil {
		t.Fatal(err)
	}
	a.setPeers(t, b.peerConfig("10.32.2.0/24"))
	out := run(t, "ip", "-n", a.ns.Name, "-o", "-4", "addr", "show", "dev", "weavewg")
	if strings.Contains(out, "10.99.0.1") || !strings.Contains(out, "10.32.0.1/12") {
		t.Errorf("adopted bridge addresses: %s", out)
	}
	if out, err := ping(ca, "10.32.2.1"); err != nil {
		t.Fatalf("after restart: %v\n%s\n%s", err, out, dump(a, b))
	}
	bad := att
	bad.Netns = "/var/run/netns/wwgt-does-not-exist"
	if err := a.host.Adopt(bad); err == nil {
		t.Error("Adopt with a missing namespace succeeded")
	}
}

// A New that fails (here: the UDP port is taken) leaves nothing behind.
func TestNewFailureCleansUp(t *testing.T) {
	h := oneHost(t)
	h.start(t)
	cfg := h.cfg
	cfg.Iface = "weavewg9"
	var err error
	if nerr := inNetns(h.ns, func() { _, err = New(cfg) }); nerr != nil {
		t.Fatal(nerr)
	}
	if err == nil || !strings.Contains(err.Error(), "6783") {
		t.Fatalf("New on a taken port: err = %v", err)
	}
	out := run(t, "ip", "-n", h.ns.Name, "-o", "link", "show")
	if strings.Contains(out, "weavewg9") {
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
	if err := h.host.Close(); err != nil {
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

// The control methods (of the Tunnel and the Host) may be called from many goroutines at once.
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
				if err := a.host.SetRoutes([]netip.Prefix{netip.MustParsePrefix(extra)}); err != nil {
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
