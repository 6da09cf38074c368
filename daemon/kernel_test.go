package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/kernelwg"
	"github.com/weavewg/weavewg/pmtu"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

// fakeKernel is a kernel device that carries every peer it is given and
// steers their endpoints, unless its steering writes fail.
type fakeKernel struct {
	peers     []kernelwg.Peer
	calls     []string
	hostIP    netip.Addr
	rx        uint64 // every peer's received bytes; 0: 7
	steerFail bool   // SetPeers' steering writes fail: steered stays
	steered   []netip.AddrPort
}

func (f *fakeKernel) Steered() []netip.AddrPort { return slices.Clone(f.steered) }

func (f *fakeKernel) SetHostIP(a netip.Addr) {
	if a.IsValid() {
		f.hostIP = a
	}
}

func (f *fakeKernel) Close() error { return nil }
func (f *fakeKernel) Name() string { return "kwweavewg0" }
func (f *fakeKernel) SetPeers(p []kernelwg.Peer) (map[key.Public]bool, error) {
	f.peers = p
	f.calls = append(f.calls, "set")
	out := map[key.Public]bool{}
	var eps []netip.AddrPort
	for _, c := range p {
		out[c.Key] = true
		eps = append(eps, c.Endpoint)
	}
	if f.steerFail {
		return out, errors.New("kernel wireguard: setting the kernel peers' endpoints: no buffer space")
	}
	slices.SortFunc(eps, netip.AddrPort.Compare)
	f.steered = slices.Compact(eps)
	return out, nil
}
func (f *fakeKernel) PruneRoutes() error { f.calls = append(f.calls, "prune"); return nil }
func (f *fakeKernel) Stats() map[key.Public]kernelwg.PeerStats {
	out := map[key.Public]kernelwg.PeerStats{}
	for _, c := range f.peers {
		rx := f.rx
		if rx == 0 {
			rx = 7
		}
		out[c.Key] = kernelwg.PeerStats{Endpoint: c.Endpoint, LastHandshake: time.Unix(1700000000, 0), RxBytes: rx}
	}
	return out
}

// TestReconcileSplitsPeersBetweenKernelAndTUN: direct peers go to the
// kernel device at the endpoint the path owner chose, and their routes
// leave the TUN; relayed peers and those on the VXLAN fast path do not;
// wireguard-go keeps every peer but stops keeping the kernel's alive; a
// peer that becomes relayed comes back to the TUN.
func TestReconcileSplitsPeersBetweenKernelAndTUN(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	fk := &fakeKernel{}
	ff := &fakeFast{use: map[key.Public]bool{pubKey(3): true}}
	d := newTestDaemonOn(t, testConfig(t), r, dataPlane{wg: tn, host: tn, fast: ff, kernel: fk})
	chosen := netip.MustParseAddrPort("198.51.100.2:40000") // ICE's choice, not gossip's
	tn.stats = map[key.Public]tunnel.PeerStats{
		pubKey(1): {Endpoint: chosen},
		pubKey(2): {Relayed: true, Via: pubKey(1)},
		pubKey(3): {Endpoint: netip.MustParseAddrPort("192.0.2.4:6783")},
	}
	tn.mtus = map[key.Public]tunnel.PeerMTU{pubKey(1): {MTU: 1284, Source: pmtu.SourceProbe, Probed: 1352}}
	r.peers = []discovery.Peer{
		{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")},
		{Key: pubKey(1), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), HostIP: netip.MustParseAddr("10.32.0.2")},
		{Key: pubKey(2), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.3:6783"), HostIP: netip.MustParseAddr("10.32.0.3")},
		{Key: pubKey(3), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.4:6783"), HostIP: netip.MustParseAddr("10.32.0.4")},
	}
	d.reconcile()
	if len(fk.peers) != 1 || fk.peers[0].Key != pubKey(1) || fk.peers[0].Endpoint != chosen {
		t.Fatalf("kernel peers %+v: want peer 1 alone, at %v", fk.peers, chosen)
	}
	if !slices.Contains(fk.peers[0].Prefixes, netip.MustParsePrefix("10.32.0.2/32")) {
		t.Errorf("peer 1's prefixes on the kernel device: %v", fk.peers[0].Prefixes)
	}
	if hp := d.hostPrefix(); !hp.IsValid() || fk.hostIP != hp.Addr() {
		t.Errorf("kernel routes' source %v; want the host's address %v", fk.hostIP, hp)
	}
	if fk.peers[0].MTU != 1284 {
		t.Errorf("peer 1 on the kernel device with MTU %d; want the probed 1284 for its routes", fk.peers[0].MTU)
	}
	if slices.Contains(tn.routes, netip.MustParsePrefix("10.32.0.2/32")) || !slices.Contains(tn.routes, netip.MustParsePrefix("10.32.0.3/32")) {
		t.Errorf("TUN routes %v: want the relayed peer's, not the kernel peer's", tn.routes)
	}
	if n := len(fk.calls); n < 2 || fk.calls[n-1] != "prune" {
		t.Errorf("kernel calls %v: want set, then prune after the TUN routes", fk.calls)
	}
	elsewhere := map[key.Public]bool{}
	for _, pc := range tn.peers {
		elsewhere[pc.Key] = pc.Elsewhere
	}
	if len(tn.peers) != 3 || !elsewhere[pubKey(1)] || elsewhere[pubKey(2)] || elsewhere[pubKey(3)] {
		t.Errorf("wireguard-go peers %d, elsewhere %v: want all 3, only peer 1 elsewhere", len(tn.peers), elsewhere)
	}
	st := d.status()
	found := false
	for _, c := range st.Conns {
		if c.Peer == pubKey(1).Name() {
			found = c.Datapath == datapathKernel
		}
		if c.Peer == pubKey(1).Name() && (c.Endpoint != chosen.String() || c.RxBytes != 7 || c.LastHandshake == nil) {
			t.Errorf("status row of the kernel peer: %+v", c)
		}
	}
	if !found {
		t.Errorf("status has no kernel wireguard row for peer 1: %+v", st.Conns)
	}
	if !strings.HasPrefix(st.Datapath, "kernel wireguard (device kwweavewg0") {
		t.Errorf("status datapath %q", st.Datapath)
	}

	// Peer 1's direct path fails: it goes back to the TUN.
	tn.stats[pubKey(1)] = tunnel.PeerStats{Relayed: true, Via: pubKey(2)}
	d.reconcile()
	if len(fk.peers) != 0 {
		t.Errorf("kernel peers %+v after peer 1 became relayed", fk.peers)
	}
	if !slices.Contains(tn.routes, netip.MustParsePrefix("10.32.0.2/32")) {
		t.Errorf("TUN routes %v lack the now relayed peer's", tn.routes)
	}
	for _, pc := range tn.peers {
		if pc.Elsewhere {
			t.Errorf("peer %s still elsewhere after it left the kernel device", pc.Key.Name())
		}
	}

	// Its direct path comes back (at another address, say a new NAT
	// mapping): it returns to the kernel device there, its route leaves
	// the TUN again, and wireguard-go stops keeping it alive.
	back := netip.MustParseAddrPort("198.51.100.2:40001")
	tn.stats[pubKey(1)] = tunnel.PeerStats{Endpoint: back}
	d.reconcile()
	if len(fk.peers) != 1 || fk.peers[0].Key != pubKey(1) || fk.peers[0].Endpoint != back {
		t.Errorf("kernel peers %+v after peer 1's direct path came back: want it at %v", fk.peers, back)
	}
	if slices.Contains(tn.routes, netip.MustParsePrefix("10.32.0.2/32")) {
		t.Errorf("TUN routes %v still carry peer 1, back on the kernel device", tn.routes)
	}
	for _, pc := range tn.peers {
		if pc.Elsewhere != (pc.Key == pubKey(1)) {
			t.Errorf("peer %s elsewhere %v after peer 1 came back to the kernel device", pc.Key.Name(), pc.Elsewhere)
		}
	}
	if n := len(fk.calls); n < 2 || fk.calls[n-2] != "set" || fk.calls[n-1] != "prune" {
		t.Errorf("kernel calls %v: want set, then prune after the TUN routes", fk.calls)
	}
}

// TestPeerLeavingKernelHandshakes: a peer that leaves the kernel device
// for wireguard-go (its direct path failed) holds the kernel's session,
// so wireguard-go is told to handshake with it, after it was given the
// peer back (no longer Elsewhere) and after the tunnel was told the peer's
// endpoint no longer goes to the kernel socket (its initiations to the
// kernel's peers are not sent); a peer that joins or stays on the device,
// or one that never was on it, is not.
func TestPeerLeavingKernelHandshakes(t *testing.T) {
	d, tn, fk := newKernelTestDaemon(t, map[key.Public]tunnel.PeerStats{
		pubKey(1): directFrom(6783),
		pubKey(2): directFrom(6784),
		pubKey(3): {Relayed: true, Via: pubKey(1)},
	})
	d.reconcile()
	if len(fk.peers) != 2 {
		t.Fatalf("kernel peers %+v: want peers 1 and 2", fk.peers)
	}
	if len(tn.rehandshakes) != 0 {
		t.Fatalf("handshakes %+v asked of wireguard-go when peers joined the kernel device (the kernel kicks those)", tn.rehandshakes)
	}
	if got, want := fmt.Sprint(tn.kernelEPs), "[192.0.2.2:6783 192.0.2.2:6784]"; got != want {
		t.Errorf("kernel endpoints told to the tunnel: %s; want the kernel device's peers' %s", got, want)
	}

	tn.stats[pubKey(1)] = tunnel.PeerStats{Relayed: true, Via: pubKey(2)}
	d.reconcile()
	if len(tn.rehandshakes) != 1 || tn.rehandshakes[0].key != pubKey(1) || tn.rehandshakes[0].elsewhere {
		t.Fatalf("handshakes asked of wireguard-go after peer 1 left the kernel device: %+v; want peer 1 alone, no longer elsewhere", tn.rehandshakes)
	}
	if got, want := fmt.Sprint(tn.rehandshakes[0].kernelEPs), "[192.0.2.2:6784]"; got != want {
		t.Errorf("kernel endpoints told to the tunnel before wireguard-go handshook with peer 1: %s; want %s (peer 1's gone, or its initiation is not sent)", got, want)
	}
	d.reconcile()
	if len(tn.rehandshakes) != 1 {
		t.Errorf("handshakes asked again with nothing moved: %+v", tn.rehandshakes)
	}
	tn.stats[pubKey(1)] = directFrom(6783)
	d.reconcile()
	if len(tn.rehandshakes) != 1 || len(fk.peers) != 2 {
		t.Errorf("peer 1 back on the kernel device (kernel peers %+v): handshakes asked of wireguard-go %+v", fk.peers, tn.rehandshakes)
	}
}

// TestPeerRelayingToUsStaysOffKernel: a peer our side reaches direct but
// whose probes say it relays to us sends its WireGuard datagrams through
// the relay, to the userspace socket: it stays on wireguard-go (a session
// made with the kernel device could not be read there), and joins the
// kernel device once its probes say it is direct too.
func TestPeerRelayingToUsStaysOffKernel(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	fk := &fakeKernel{}
	d := newTestDaemonOn(t, testConfig(t), r, dataPlane{wg: tn, host: tn, fast: &fakeFast{}, kernel: fk})
	ep := netip.MustParseAddrPort("192.0.2.2:6783")
	tn.stats = map[key.Public]tunnel.PeerStats{pubKey(1): {Endpoint: ep, PeerRelays: true}}
	r.peers = []discovery.Peer{{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")},
		{Key: pubKey(1), Reachable: true, Endpoint: ep, HostIP: netip.MustParseAddr("10.32.0.2")}}
	d.reconcile()
	if len(fk.peers) != 0 || d.onKernelNow()[pubKey(1)] {
		t.Fatalf("kernel peers %+v: a peer that relays to us is on the kernel device", fk.peers)
	}
	tn.stats[pubKey(1)] = tunnel.PeerStats{Endpoint: ep}
	d.reconcile()
	if len(fk.peers) != 1 || !d.onKernelNow()[pubKey(1)] {
		t.Fatalf("kernel peers %+v: want peer 1 once it is direct both ways", fk.peers)
	}
	tn.stats[pubKey(1)] = tunnel.PeerStats{Endpoint: ep, PeerRelays: true}
	d.reconcile()
	if len(fk.peers) != 0 || len(tn.rehandshakes) != 1 || tn.rehandshakes[0].key != pubKey(1) {
		t.Errorf("peer 1 relays to us again: kernel peers %+v, handshakes asked of wireguard-go %+v; want none on the device, one handshake with peer 1", fk.peers, tn.rehandshakes)
	}
}

// TestKernelPathsChanged: reconcile is kicked when a peer moves between
// direct and relayed or a direct peer's endpoint moves (the kernel device
// must follow: it does not roam peers itself), and not for changes the
// device does not see.
func TestKernelPathsChanged(t *testing.T) {
	var k kernelPaths
	ep := netip.MustParseAddrPort("192.0.2.4:6783")
	paths := map[key.Public]reach.Path{pubKey(1): {Endpoint: ep}, pubKey(2): {Relayed: true, Via: pubKey(1)}}
	for _, step := range []struct {
		what string
		edit func()
		want bool
	}{
		{"the first paths", func() {}, true},
		{"the same paths", func() {}, false},
		{"peer 1 idle", func() { paths[pubKey(1)] = reach.Path{Endpoint: ep, Idle: true} }, false},
		{"peer 2's relay's endpoint only", func() { paths[pubKey(2)] = reach.Path{Relayed: true, Via: pubKey(1), Endpoint: ep} }, false},
		{"peer 1's endpoint moved", func() {
			paths[pubKey(1)] = reach.Path{Endpoint: netip.MustParseAddrPort("192.0.2.6:6783"), From: reach.SourceTraffic}
		}, true},
		{"peer 1 relayed", func() { paths[pubKey(1)] = reach.Path{Relayed: true, Via: pubKey(2)} }, true},
		{"peer 2 direct", func() { paths[pubKey(2)] = reach.Path{Endpoint: ep} }, true},
		{"peer 2 relays to us", func() { paths[pubKey(2)] = reach.Path{Endpoint: ep, PeerRelays: true} }, true},
		{"peer 2 direct both ways", func() { paths[pubKey(2)] = reach.Path{Endpoint: ep} }, true},
	} {
		step.edit()
		if got := k.changed(paths); got != step.want {
			t.Errorf("%s: changed %v; want %v", step.what, got, step.want)
		}
	}
}

// TestKernelPeersStayActive: wireguard-go never sees a kernel peer's data,
// so reconcile tells the path owner a kernel peer is active whenever the
// kernel's byte counters grew, and not when they did not (an unused pair
// still goes idle).
func TestKernelPeersStayActive(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	fk := &fakeKernel{rx: 100}
	d, err := prepare(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.assemble(r, dataPlane{wg: tn, host: tn, fast: &fakeFast{}, kernel: fk}, fakeOpener); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.closers.close() })
	tn.stats = map[key.Public]tunnel.PeerStats{pubKey(1): {Endpoint: netip.MustParseAddrPort("192.0.2.2:6783")}}
	r.peers = []discovery.Peer{
		{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")},
		{Key: pubKey(1), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), HostIP: netip.MustParseAddr("10.32.0.2")},
	}
	activeAfter := func(rx uint64) bool {
		fk.rx = rx
		tn.active = nil
		d.reconcile()
		return slices.Contains(tn.active, pubKey(1))
	}
	if !activeAfter(100) {
		t.Error("a peer that arrived on the kernel device with bytes moved was not marked active")
	}
	if activeAfter(100) {
		t.Error("a kernel peer whose bytes did not grow was marked active")
	}
	if !activeAfter(250) {
		t.Error("a kernel peer whose bytes grew was not marked active")
	}
}

// TestStatusRowOfKernelPeer: the row says kernel wireguard with the
// kernel's endpoint, handshake and bytes.
func TestStatusRowOfKernelPeer(t *testing.T) {
	row := api.Connection{Endpoint: "192.0.2.2:6783", Direct: true}
	addKernel(&row, kernelwg.PeerStats{Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), RxBytes: 10, TxBytes: 20})
	d := &Daemon{}
	d.addDatapath(&row, pubKey(1), nil)
	if row.Datapath != datapathKernel || row.RxBytes != 10 || row.TxBytes != 20 || row.LastHandshake != nil {
		t.Errorf("row %+v", row)
	}
}

func TestDatapathFlag(t *testing.T) {
	for _, v := range []string{"", "auto", "kernel", "userspace"} {
		c := testConfig(t)
		c.Datapath = v
		if err := c.validate(); err != nil {
			t.Errorf("--datapath %q: %v", v, err)
		}
	}
	c := testConfig(t)
	c.Datapath = "ebpf"
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "auto, kernel or userspace") {
		t.Errorf("--datapath ebpf: %v", err)
	}
}

// TestKernelEndpointsAreTheSteered: the tunnel is told the endpoints the
// steering sets hold, not those of the kernel device's peers: when the
// sets' write fails, a peer that joined the device is not steered, its
// answers still reach wireguard-go, and wireguard-go's initiations to it
// must go out (were they dropped, the pair had no session until the next
// write: the kernel's answers go to wireguard-go too).
func TestKernelEndpointsAreTheSteered(t *testing.T) {
	d, tn, fk := newKernelTestDaemon(t, map[key.Public]tunnel.PeerStats{
		pubKey(1): directFrom(6783),
		pubKey(2): {Relayed: true, Via: pubKey(1)},
	})
	d.reconcile()
	if got, want := fmt.Sprint(tn.kernelEPs), "[192.0.2.2:6783]"; got != want {
		t.Fatalf("kernel endpoints told to the tunnel: %s; want peer 1's %s", got, want)
	}
	// Peer 2's path goes direct; the device takes it, the sets' write
	// fails.
	fk.steerFail = true
	tn.stats[pubKey(2)] = directFrom(6784)
	d.reconcile()
	if len(fk.peers) != 2 {
		t.Fatalf("kernel peers %+v: want peers 1 and 2", fk.peers)
	}
	if got, want := fmt.Sprint(tn.kernelEPs), "[192.0.2.2:6783]"; got != want {
		t.Errorf("kernel endpoints told to the tunnel after the steering write failed: %s; want the sets' %s (peer 2's answers still reach wireguard-go)", got, want)
	}
	fk.steerFail = false
	d.reconcile()
	if got, want := fmt.Sprint(tn.kernelEPs), "[192.0.2.2:6783 192.0.2.2:6784]"; got != want {
		t.Errorf("kernel endpoints told to the tunnel once the write succeeded: %s; want %s", got, want)
	}
}

// newKernelTestDaemon is a daemon with a fake kernel device whose tunnel
// reports stats for peers 1..len(stats) (pubKey(i), host 10.32.0.1+i),
// every one reachable in the router's view.
func newKernelTestDaemon(t *testing.T, stats map[key.Public]tunnel.PeerStats) (*Daemon, *fakeTunnel, *fakeKernel) {
	t.Helper()
	r, tn := newFakeRouter(), newFakeTunnel()
	fk := &fakeKernel{}
	d := newTestDaemonOn(t, testConfig(t), r, dataPlane{wg: tn, host: tn, fast: &fakeFast{}, kernel: fk})
	tn.stats = stats
	r.peers = []discovery.Peer{{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")}}
	for i := byte(1); int(i) <= len(stats); i++ {
		r.peers = append(r.peers, discovery.Peer{Key: pubKey(i), Reachable: true,
			Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), HostIP: netip.AddrFrom4([4]byte{10, 32, 0, 1 + i})})
	}
	return d, tn, fk
}

// directFrom is the stats of a peer reached direct at 192.0.2.2:port.
func directFrom(port uint16) tunnel.PeerStats {
	return tunnel.PeerStats{Endpoint: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), port)}
}
