package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/ipam"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

// fakeRouter stands in for discovery.Router.
type fakeRouter struct {
	mu       sync.Mutex
	peers    []discovery.Peer
	attached []netip.Prefix
	targets  []string
	changes  chan struct{}
}

func newFakeRouter() *fakeRouter { return &fakeRouter{changes: make(chan struct{}, 1)} }

func (f *fakeRouter) Start() error { return nil }
func (f *fakeRouter) Close() error { return nil }
func (f *fakeRouter) Connect(addr string) error {
	if strings.ContainsAny(addr, " !") {
		return errors.New("invalid address")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targets = append(f.targets, addr)
	return nil
}
func (f *fakeRouter) Forget(addr string) error { return discovery.ErrUnknownTarget }
func (f *fakeRouter) SetAttached(p []netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached = append([]netip.Prefix(nil), p...)
}
func (f *fakeRouter) SetHostIP(netip.Addr)     {}
func (f *fakeRouter) Changes() <-chan struct{} { return f.changes }
func (f *fakeRouter) Peers() []discovery.Peer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]discovery.Peer(nil), f.peers...)
}
func (f *fakeRouter) Connections() []discovery.ConnState { return nil }
func (f *fakeRouter) Counters() map[string]uint64        { return map[string]uint64{"control_x": 1} }

// fakeTunnel stands in for tunnel.Tunnel and hostnet.Host.
type fakeTunnel struct {
	mu       sync.Mutex
	peers    []tunnel.PeerConfig
	routes   []netip.Prefix
	attached map[string]hostnet.Attached
	gone     map[string]bool // namespaces whose Adopt fails
	stats    map[key.Public]tunnel.PeerStats
	mtus     map[key.Public]tunnel.PeerMTU
	active   []key.Public // MarkActive's peers, in order
	// Rehandshake's peers, in order, each with its Elsewhere in the last
	// SetPeers before the call
	rehandshakes []rehandshake
	kernelEPs    []netip.AddrPort // SetKernelEndpoints', the last
}

type rehandshake struct {
	key       key.Public
	elsewhere bool
	kernelEPs []netip.AddrPort // the kernel endpoints told before the call
}

func newFakeTunnel() *fakeTunnel {
	return &fakeTunnel{attached: map[string]hostnet.Attached{}, gone: map[string]bool{}}
}

func (f *fakeTunnel) Close() error              { return nil }
func (f *fakeTunnel) CloseKeepingBridge() error { return nil }
func (f *fakeTunnel) SetPeers(p []tunnel.PeerConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = p
	return nil
}
func (f *fakeTunnel) PeerStats() map[key.Public]tunnel.PeerStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}
func (f *fakeTunnel) Counters() map[string]uint64          { return map[string]uint64{"udp_y": 2} }
func (f *fakeTunnel) SetSTUNHandler(tunnel.PacketHandler)  {}
func (f *fakeTunnel) SendUDP([]byte, netip.AddrPort) error { return nil }
func (f *fakeTunnel) SetPublic(bool)                       {}
func (f *fakeTunnel) SetPathObserver(tunnel.PathObserver)  {}
func (f *fakeTunnel) MarkActive(keys map[key.Public]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range keys {
		f.active = append(f.active, k)
	}
}
func (f *fakeTunnel) Rehandshake(keys map[key.Public]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range keys {
		r := rehandshake{key: k, kernelEPs: f.kernelEPs}
		for _, pc := range f.peers {
			if pc.Key == k {
				r.elsewhere = pc.Elsewhere
			}
		}
		f.rehandshakes = append(f.rehandshakes, r)
	}
}
func (f *fakeTunnel) SetKernelEndpoints(eps []netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kernelEPs = slices.Clone(eps)
	slices.SortFunc(f.kernelEPs, netip.AddrPort.Compare)
}
func (f *fakeTunnel) PeerMTUs() map[key.Public]tunnel.PeerMTU {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mtus
}
func (f *fakeTunnel) SetRoutesWithMTU(p []netip.Prefix, _ map[netip.Prefix]int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes = p
	return nil
}
func (f *fakeTunnel) CreateVeth(string, string) (net.HardwareAddr, error) {
	return nil, errors.New("no veths in the fake")
}
func (f *fakeTunnel) AdoptVeth(string) error  { return errors.New("no veths in the fake") }
func (f *fakeTunnel) DeleteVeth(string) error { return nil }
func (f *fakeTunnel) Attach(s hostnet.AttachSpec) (hostnet.Attached, error) {
	a := hostnet.Attached{Netns: s.Netns, IP: s.IP, IfName: s.IfName, HostVeth: "vethwe-test", MTU: 1420}
	f.attached[s.Netns] = a
	return a, nil
}
func (f *fakeTunnel) Adopt(a hostnet.Attached) error {
	if f.gone[a.Netns] {
		return errors.New("namespace is gone")
	}
	return nil
}
func (f *fakeTunnel) Detach(a hostnet.Attached) error { delete(f.attached, a.Netns); return nil }

// fakeChannel drops what is sent: one daemon under test has no peers.
type fakeChannel struct{}

func (fakeChannel) Send(key.Public, []byte) error { return nil }
func (fakeChannel) Broadcast([]byte)              {}

func fakeOpener(string, func(key.Public, []byte)) (gossipChannel, error) { return fakeChannel{}, nil }

func testConfig(t testing.TB) Config {
	t.Helper()
	dir := t.TempDir()
	return Config{
		Nickname:  "test",
		Port:      DefaultPort,
		Password:  "pw",
		StateDir:  filepath.Join(dir, "state"),
		APISocket: filepath.Join(dir, "api.sock"),
		Iface:     DefaultIface,
		Bridge:    DefaultBridge,
		MTU:       1420,
		HostIP:    netip.MustParsePrefix("10.32.0.1/12"),
		Range:     netip.MustParsePrefix(DefaultRange),
		Logger:    slog.New(slog.DiscardHandler),
		DNSListen: "127.0.0.1:0",

		IPAMInMemory: true,
	}
}

func newTestDaemon(t testing.TB, cfg Config, r *fakeRouter, tn *fakeTunnel) *Daemon {
	t.Helper()
	return newTestDaemonOn(t, cfg, r, dataPlane{wg: tn, host: tn})
}

// newTestDaemonOn is newTestDaemon with the data plane given (a fake
// kernel device or fast path beside the fake tunnel).
func newTestDaemonOn(t testing.TB, cfg Config, r *fakeRouter, dp dataPlane) *Daemon {
	t.Helper()
	d, err := prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// No shared socket: no NAT traversal in these tests.
	if err := d.assemble(r, dp, fakeOpener); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.closers.close() })
	return d
}

func pubKey(b byte) key.Public {
	var k key.Public
	k[0] = b
	return k
}

func TestReconcileAllowsEachPeerItsAddresses(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, testConfig(t), r, tn)
	ep := netip.MustParseAddrPort("192.0.2.2:6783")
	r.peers = []discovery.Peer{
		{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")},
		{Key: pubKey(1), Reachable: true, Endpoint: ep, HostIP: netip.MustParseAddr("10.32.0.2")},
		{Key: pubKey(2), Reachable: false, HostIP: netip.MustParseAddr("10.32.0.3")},
		// Claims our host address: must never get a route to it.
		{Key: pubKey(3), Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")},
	}
	d.reconcile()
	// Peer 1 asks for space; we own everything, so we grant it a range.
	if err := d.ipam.HandleMessage(pubKey(1), ipam.AppendRequestMessage(nil, d.ipam.Status().Seed)); err != nil {
		t.Fatal(err)
	}
	granted := d.ipam.Prefixes(pubKey(1))
	if len(granted) == 0 {
		t.Fatal("no range granted to peer 1")
	}
	d.reconcile()
	got := map[key.Public][]netip.Prefix{}
	for _, p := range tn.peers {
		got[p.Key] = p.AllowedIPs
		if p.Key == pubKey(1) && p.Endpoint != ep {
			t.Errorf("endpoint = %v, want %v", p.Endpoint, ep)
		}
	}
	if len(got) != 2 {
		t.Fatalf("WireGuard peers = %v, want exactly the two reachable non-self peers", got)
	}
	want1 := append([]netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}, granted...)
	if a := got[pubKey(1)]; !slices.Equal(a, want1) {
		t.Errorf("peer 1 allowed %v, want its host address and its range %v", a, want1)
	}
	if a := got[pubKey(3)]; len(a) != 0 {
		t.Errorf("peer claiming our host address allowed %v, want nothing", a)
	}
	if d.hostIPConflict[pubKey(3)] == "" {
		t.Error("host address conflict not recorded")
	}
}

// TestReconcileRefusesHostIPOfAContainer is issue 14 acceptance 2 at the
// daemon: a peer declaring (--host-ip) the address of another peer's
// container, or the same host address as a third peer, gets no /32 for it,
// and status says why; the container's owner keeps its route.
func TestReconcileRefusesHostIPOfAContainer(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, testConfig(t), r, tn)
	victim := netip.MustParseAddr("10.40.0.5")
	r.peers = []discovery.Peer{
		{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")},
		{Key: pubKey(1), Reachable: true, HostIP: netip.MustParseAddr("10.32.0.2"), Attached: []netip.Prefix{netip.PrefixFrom(victim, 12)}},
		{Key: pubKey(2), Reachable: true, HostIP: victim},
		{Key: pubKey(3), Reachable: true, HostIP: netip.MustParseAddr("10.32.0.9")},
		{Key: pubKey(4), Reachable: true, HostIP: netip.MustParseAddr("10.32.0.9")},
	}
	d.reconcile()
	for _, p := range tn.peers {
		for _, a := range p.AllowedIPs {
			if p.Key != pubKey(1) && (a.Contains(victim) && a.Bits() == 32 || a == netip.MustParsePrefix("10.32.0.9/32")) {
				t.Errorf("peer %x allowed %v", p.Key[0], a)
			}
		}
		if p.Key == pubKey(1) && !slices.Contains(p.AllowedIPs, netip.MustParsePrefix("10.32.0.2/32")) {
			t.Errorf("honest peer 1 lost its host address: %v", p.AllowedIPs)
		}
	}
	st := d.status()
	reasons := map[string]string{}
	for _, p := range st.Peers {
		reasons[p.PublicKey] = p.HostIPRefused
	}
	for _, k := range []key.Public{pubKey(2), pubKey(3), pubKey(4)} {
		if reasons[k.String()] == "" {
			t.Errorf("status does not show peer %x's host address refused: %v", k[0], reasons)
		}
	}
	if reasons[pubKey(1).String()] != "" {
		t.Errorf("honest peer 1 shown refused: %q", reasons[pubKey(1).String()])
	}
}

func TestAttachValidation(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, testConfig(t), r, tn)
	r.peers = []discovery.Peer{{Key: pubKey(1), Nickname: "h2", Reachable: true,
		HostIP: netip.MustParseAddr("10.32.9.9")}}
	ns := filepath.Join(t.TempDir(), "ns")
	os.WriteFile(ns, nil, 0o600)
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: ns, IP: "10.32.1.5/12"}); err != nil {
		t.Fatalf("valid attach failed: %v", err)
	}
	ns2 := filepath.Join(t.TempDir(), "ns2")
	os.WriteFile(ns2, nil, 0o600)
	for _, tc := range []struct {
		name, netns, ip, want string
	}{
		{"no netns", "", "10.32.1.6/12", "netns is required"},
		{"missing netns", "/nonexistent/ns", "10.32.1.6/12", "network namespace"},
		{"garbage ip", ns2, "ten.one", "not an IPv4 address"},
		{"outside range", ns2, "192.168.1.1/12", "outside the overlay range"},
		{"wrong prefix", ns2, "10.32.1.6/24", "prefix length /12"},
		{"network address", ns2, "10.32.0.0/12", "network or broadcast"},
		{"host address", ns2, "10.32.0.1/12", "host's own overlay address"},
		{"remote host address", ns2, "10.32.9.9/12", "overlay address of peer"},
		{"local in use", ns2, "10.32.1.5/12", "already in use here"},
		{"netns attached", ns, "10.32.1.7/12", "already attached with"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.attach(context.Background(), api.AttachRequest{Netns: tc.netns, IP: tc.ip})
			if err == nil || !errors.Is(err, errBadRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("attach(%q, %q) = %v, want a bad-request error containing %q", tc.netns, tc.ip, err, tc.want)
			}
		})
	}
	if len(tn.attached) != 1 {
		t.Errorf("tunnel has %d attachments after refused requests, want 1", len(tn.attached))
	}
	// A bare address gets the overlay prefix length.
	a, err := d.attach(context.Background(), api.AttachRequest{Netns: ns2, IP: "10.32.1.8"})
	if err != nil || a.IP != "10.32.1.8/12" {
		t.Fatalf("attach with a bare address = %+v, %v; want 10.32.1.8/12", a, err)
	}
	if len(r.attached) != 2 {
		t.Errorf("published %v, want both attachments", r.attached)
	}
}

func TestAttachAllocates(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, testConfig(t), r, tn)
	dir := t.TempDir()
	seen := map[string]bool{}
	var first string
	for i := range 20 {
		ns := filepath.Join(dir, fmt.Sprint("ns", i))
		os.WriteFile(ns, nil, 0o600)
		a, err := d.attach(context.Background(), api.AttachRequest{Netns: ns})
		if err != nil {
			t.Fatal(err)
		}
		if seen[a.IP] || !strings.HasSuffix(a.IP, "/12") || a.IP == "10.32.0.1/12" {
			t.Fatalf("attach %d got %s: duplicate, host address or not /12", i, a.IP)
		}
		seen[a.IP] = true
		if i == 0 {
			first = a.IP
		}
	}
	// A claimed address is refused to anyone else, and free again after detach.
	ns0 := filepath.Join(dir, "ns0")
	other := filepath.Join(dir, "other")
	os.WriteFile(other, nil, 0o600)
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: other, IP: first}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("claiming a used address: %v", err)
	}
	if _, err := d.detach(api.DetachRequest{Netns: ns0}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: other, IP: first}); err != nil {
		t.Fatalf("claiming a freed address: %v", err)
	}
	st := d.ipamStatus()
	if st.Allocated != 21 || len(st.Peers) != 1 || !st.Peers[0].Self || st.Peers[0].Percent != 100 {
		t.Fatalf("ipam status = %+v, want 20 allocated and the host address on the one peer owning everything", st)
	}
	if ps := d.ps(); len(ps) != 20 {
		t.Fatalf("ps lists %d attachments, want 20", len(ps))
	}
}

func TestAttachNameResolves(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, testConfig(t), r, tn)
	ns := filepath.Join(t.TempDir(), "ns")
	os.WriteFile(ns, nil, 0o600)
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: ns, IP: "10.32.1.5/12", Name: "web"}); err != nil {
		t.Fatal(err)
	}
	got, err := d.dnsLookup("web")
	if err != nil || len(got.Addresses) != 1 || got.Addresses[0] != "10.32.1.5" {
		t.Fatalf("lookup web = %+v, %v; want 10.32.1.5", got, err)
	}
	if st := d.dnsStatus(true); len(st.Entries) != 1 || st.Entries[0].Name != "web.weave.local." || st.Entries[0].Peer != d.pub.Name() {
		t.Fatalf("dns status = %+v", st)
	}
	if _, err := d.dnsChange(api.DNSRequest{Name: "db", Addresses: []string{"10.32.9.1", "10.32.9.2"}}, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.dnsLookup("db.weave.local."); len(got.Addresses) != 2 {
		t.Fatalf("lookup db = %+v, want two addresses", got)
	}
	if _, err := d.dnsChange(api.DNSRequest{Name: "x", Addresses: []string{"nonsense"}}, true); !errors.Is(err, errBadRequest) {
		t.Fatalf("dns-add of a bad address: %v", err)
	}
	if _, err := d.detach(api.DetachRequest{Netns: ns}); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.dnsLookup("web"); len(got.Addresses) != 0 {
		t.Fatalf("web still resolves to %v after detach", got.Addresses)
	}
}

func TestAttachmentsSurviveRestart(t *testing.T) {
	cfg := testConfig(t)
	dir := t.TempDir()
	nsA, nsB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(nsA, nil, 0o600)
	os.WriteFile(nsB, nil, 0o600)

	r1, tn1 := newFakeRouter(), newFakeTunnel()
	d1 := newTestDaemon(t, cfg, r1, tn1)
	for ns, ip := range map[string]string{nsA: "10.32.1.1/12", nsB: "10.32.1.2/12"} {
		if _, err := d1.attach(context.Background(), api.AttachRequest{Netns: ns, IP: ip}); err != nil {
			t.Fatal(err)
		}
	}

	// The restarted daemon finds nsB gone: it keeps nsA only, and says so
	// to the mesh.
	r2, tn2 := newFakeRouter(), newFakeTunnel()
	tn2.gone[nsB] = true
	d2 := newTestDaemon(t, cfg, r2, tn2)
	if d2.pub != d1.pub {
		t.Fatal("identity changed across restart")
	}
	if len(d2.attachments) != 1 || d2.attachments[0].Netns != nsA {
		t.Fatalf("attachments after restart = %+v, want only %s", d2.attachments, nsA)
	}
	if len(r2.attached) != 1 || r2.attached[0].String() != "10.32.1.1/32" {
		t.Fatalf("published %v after restart, want [10.32.1.1/32]", r2.attached)
	}
	recs, err := loadAttachments(cfg.StateDir, cfg.Range.Bits(), cfg.Logger)
	if err != nil || len(recs) != 1 {
		t.Fatalf("state file holds %v (%v), want the one surviving attachment", recs, err)
	}
	if _, err := d2.detach(api.DetachRequest{Netns: nsA}); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.detach(api.DetachRequest{Netns: nsA}); !errors.Is(err, errBadRequest) {
		t.Fatalf("second detach = %v, want not attached", err)
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	k1, created, err := loadOrCreateKey(dir)
	if err != nil || !created {
		t.Fatalf("first load: %v created=%v", err, created)
	}
	fi, err := os.Stat(filepath.Join(dir, keyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	k2, created, err := loadOrCreateKey(dir)
	if err != nil || created || k1 != k2 {
		t.Fatalf("second load gave a different key or recreated it (%v)", err)
	}
	os.WriteFile(filepath.Join(dir, keyFile), []byte("garbage"), 0o600)
	if _, _, err := loadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt key: err = %v, want a clear error", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"host ip outside", func(c *Config) { c.HostIP = netip.MustParsePrefix("192.0.2.1/12") }, "inside"},
		{"host ip broadcast", func(c *Config) { c.HostIP = netip.MustParsePrefix("10.47.255.255/12") }, "broadcast"},
		{"range unmasked", func(c *Config) { c.Range = netip.MustParsePrefix("10.32.0.1/12") }, "network prefix"},
		{"mtu", func(c *Config) { c.MTU = 100 }, "mtu"},
		{"long iface", func(c *Config) { c.Iface = "averyveryverylongname" }, "15 characters"},
		{"loopback range", func(c *Config) { c.Range = netip.MustParsePrefix("127.0.0.0/8"); c.HostIP = netip.Prefix{} }, "special-purpose"},
		{"multicast range", func(c *Config) { c.Range = netip.MustParsePrefix("224.0.0.0/8"); c.HostIP = netip.Prefix{} }, "special-purpose"},
		{"this-network range", func(c *Config) { c.Range = netip.MustParsePrefix("0.0.0.0/8"); c.HostIP = netip.Prefix{} }, "special-purpose"},
		{"forced loopback", func(c *Config) {
			c.Range = netip.MustParsePrefix("127.0.0.0/8")
			c.HostIP = netip.Prefix{}
			c.ForceRange = true
		}, "special-purpose"},
		{"public range", func(c *Config) { c.Range = netip.MustParsePrefix("8.8.0.0/16"); c.HostIP = netip.Prefix{} }, "--force-range"},
		{"straddles private", func(c *Config) { c.Range = netip.MustParsePrefix("172.0.0.0/8"); c.HostIP = netip.Prefix{} }, "--force-range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			tc.mod(&c)
			if err := c.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// The host address comes from IPAM: allocated (under hostID, so no
// container gets it), persisted in host.json, the same after a restart.
func TestHostAddressFromIPAM(t *testing.T) {
	cfg := testConfig(t)
	cfg.HostIP = netip.Prefix{}
	cfg.IPAMInMemory = false
	d := newTestDaemon(t, cfg, newFakeRouter(), newFakeTunnel())
	hp := d.hostPrefix()
	if !hp.IsValid() || !cfg.Range.Contains(hp.Addr()) || hp.Bits() != cfg.Range.Bits() {
		t.Fatalf("host address %v, want one in %v with its prefix length", hp, cfg.Range)
	}
	found := false
	for _, a := range d.ipam.Allocations() {
		found = found || (a.Addr == hp.Addr() && a.ID == hostID)
	}
	if !found {
		t.Fatalf("host address %v is not allocated in IPAM: %v", hp, d.ipam.Allocations())
	}
	if c, err := d.ipam.Allocate("container"); err != nil || c == hp.Addr() {
		t.Fatalf("a container got %v (%v); the host has %v", c, err, hp)
	}
	if st := d.status(); st.HostIP != hp.String() || st.HostIPFrom != "ipam" || len(st.Exposed) != 0 {
		t.Fatalf("status: host_ip %q from %q, exposed %v", st.HostIP, st.HostIPFrom, st.Exposed)
	}
	d.closers.close()
	d2 := newTestDaemon(t, cfg, newFakeRouter(), newFakeTunnel())
	if got := d2.hostPrefix(); got != hp {
		t.Fatalf("after a restart the host address is %v, was %v", got, hp)
	}
}

func TestAPI(t *testing.T) {
	cfg := testConfig(t)
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, cfg, r, tn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if _, err := os.Stat(cfg.APISocket); err == nil {
			t.Error("API socket left behind after stop")
		}
	})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.APISocket)
	}}}
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err = c.Get("http://x" + api.PathStatus); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var st api.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Name != d.pub.Name() || st.Counters["control_x"] != 1 || st.Counters["udp_y"] != 2 {
		t.Fatalf("status = %+v, %v", st, err)
	}
	resp.Body.Close()

	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"bad json", "POST", api.PathAttach, "{not json", 400, "not the expected JSON"},
		{"empty body", "POST", api.PathAttach, "", 400, "not the expected JSON"},
		{"missing field", "POST", api.PathAttach, "{}", 400, "netns is required"},
		{"oversized", "POST", api.PathConnect, `{"address":"` + strings.Repeat("a", 100<<10) + `"}`, 400, "too large"},
		{"bad address", "POST", api.PathConnect, `{"address":"no such!"}`, 400, "invalid address"},
		{"unknown target", "POST", api.PathForget, `{"address":"192.0.2.9"}`, 400, "not a connection target"},
		{"unknown path", "GET", "/v1/nope", "", 404, "no such API path"},
		{"wrong method", "DELETE", api.PathStatus, "", 405, "takes GET"},
		{"metrics", "GET", api.PathMetrics, "", 200, "weavewg_control_x_total 1"},
		{"pprof", "GET", "/debug/pprof/goroutine?debug=1", "", 200, "goroutine profile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://x"+tc.path, strings.NewReader(tc.body))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
				t.Fatalf("%s %s = %d %s, want %d containing %q", tc.method, tc.path, resp.StatusCode, b, tc.code, tc.want)
			}
		})
	}
	if len(tn.attached) != 0 {
		t.Error("a refused request attached something")
	}
}

// TestAnnounceFirstToken: the token a new network prints is for one host
// within an hour, and goes to the terminal only; without a terminal
// (systemd, a log file) none is printed anywhere.
func TestAnnounceFirstToken(t *testing.T) {
	for _, terminal := range []bool{true, false} {
		r, tn := newFakeRouter(), newFakeTunnel()
		var notified, printed []string
		cfg := testConfig(t)
		cfg.Notify = func(m string) { notified = append(notified, m) }
		if terminal {
			cfg.Terminal = func(m string) { printed = append(printed, m) }
		}
		d := newTestDaemon(t, cfg, r, tn)
		d.createdNetwork = true
		d.tokens = &fakeTokens{}
		// A reachable peer, so the token has a member to name whatever
		// interfaces the test machine has.
		r.peers = []discovery.Peer{{Key: pubKey(1), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783")}}
		d.announce()
		for _, m := range notified {
			if strings.Contains(m, discovery.TokenPrefix) {
				t.Errorf("terminal=%v: a token went to Notify: %q", terminal, m)
			}
		}
		if !terminal {
			if len(printed) != 0 || len(notified) != 1 || !strings.Contains(notified[0], "weavewg token create") {
				t.Errorf("no terminal: printed %q, notified %q", printed, notified)
			}
			continue
		}
		if len(printed) != 1 {
			t.Fatalf("terminal: printed %q, notified %q", printed, notified)
		}
		i := strings.Index(printed[0], discovery.TokenPrefix)
		if i < 0 {
			t.Fatalf("no token in %q", printed[0])
		}
		tok, err := discovery.ParseToken(strings.Fields(printed[0][i:])[0])
		if err != nil {
			t.Fatal(err)
		}
		if left := time.Until(tok.Expiry); tok.Uses != 1 || left <= 0 || left > time.Hour {
			t.Errorf("first token: %d uses, expires in %v; want 1 use within an hour", tok.Uses, left)
		}
	}
}

// fakeTokens makes tokens the way the registry does, without one.
type fakeTokens struct{}

func (*fakeTokens) CreateToken(ttl time.Duration, uses uint16, eps []discovery.Bootstrap) (discovery.Token, error) {
	t := discovery.Token{ID: discovery.TokenID{1}, Uses: uses, Endpoints: eps}
	if ttl > 0 {
		t.Expiry = time.Now().Add(ttl).Truncate(time.Second)
	}
	return t, nil
}
func (*fakeTokens) Tokens() []discovery.TokenRecord        { return nil }
func (*fakeTokens) RevokeToken(id discovery.TokenID) error { return nil }

func TestRangeSpaceAllowed(t *testing.T) {
	for _, r := range []string{"10.32.0.0/12", "172.16.0.0/12", "192.168.100.0/24", "100.64.0.0/10"} {
		if err := checkRangeSpace(netip.MustParsePrefix(r), false); err != nil {
			t.Errorf("%s: %v", r, err)
		}
	}
	if err := checkRangeSpace(netip.MustParsePrefix("8.8.0.0/16"), true); err != nil {
		t.Errorf("forced public range: %v", err)
	}
}

// A range overlapping a local interface's subnet is refused (the loopback
// interface's 127.0.0.0/8 is always there to overlap).
func TestRangeOverlappingAnInterface(t *testing.T) {
	err := checkRangeFree(netip.MustParsePrefix("127.0.0.0/16"), DefaultIface, DefaultBridge)
	if err == nil || !strings.Contains(err.Error(), "interface lo") {
		t.Errorf("checkRangeFree(127.0.0.0/16) = %v", err)
	}
	if err := checkRangeFree(netip.MustParsePrefix("127.0.0.0/16"), "lo"); err != nil {
		t.Errorf("weavewg's own interfaces are not counted: %v", err)
	}
}

func TestAttachRefusesHostNamespaces(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, testConfig(t), r, tn)
	for _, ns := range []string{"/proc/self/ns/net", "/proc/1/ns/net"} {
		if _, err := os.Stat(ns); err != nil {
			t.Logf("%s: %v (cannot be attached here anyway)", ns, err)
			continue
		}
		_, err := d.attach(context.Background(), api.AttachRequest{Netns: ns})
		if err == nil || !strings.Contains(err.Error(), "attach a container's namespace") {
			t.Errorf("attach %s = %v, want refused", ns, err)
		}
	}
}
