package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
	"github.com/weavewg/weavewg/vxlan"
)

// fakeFast is a fast path that carries the peers in use.
type fakeFast struct {
	use   map[key.Public]bool
	cands []vxlan.Peer
	calls []string
}

func (f *fakeFast) Close() error { return nil }
func (f *fakeFast) SetPeers(p []vxlan.Peer) (map[key.Public]bool, error) {
	f.cands = p
	f.calls = append(f.calls, "set")
	out := map[key.Public]bool{}
	for _, c := range p {
		if f.use[c.Key] {
			out[c.Key] = true
		}
	}
	return out, nil
}
func (f *fakeFast) PruneRoutes() error { f.calls = append(f.calls, "prune"); return nil }
func (f *fakeFast) Stats() map[key.Public]vxlan.PeerStats {
	out := map[key.Public]vxlan.PeerStats{}
	for _, c := range f.cands {
		out[c.Key] = vxlan.PeerStats{Trusted: true, Using: f.use[c.Key],
			Endpoint: netip.AddrPortFrom(c.Underlay, 6784), RTT: time.Millisecond}
	}
	return out
}
func (f *fakeFast) Counters() map[string]uint64 { return nil }

func TestReconcileRoutesFastPeersOutOfTheTUN(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	ff := &fakeFast{use: map[key.Public]bool{pubKey(1): true}}
	d := newTestDaemonOn(t, testConfig(t), r, dataPlane{wg: tn, host: tn, fast: ff})
	r.peers = []discovery.Peer{
		{Key: d.pub, Self: true, Reachable: true, HostIP: netip.MustParseAddr("10.32.0.1")},
		{Key: pubKey(1), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), HostIP: netip.MustParseAddr("10.32.0.2")},
		{Key: pubKey(2), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.3:6783"), HostIP: netip.MustParseAddr("10.32.0.3")},
		// Claims our host address: it cannot be a VXLAN next hop.
		{Key: pubKey(3), Reachable: true, Endpoint: netip.MustParseAddrPort("192.0.2.4:6783"), HostIP: netip.MustParseAddr("10.32.0.1")},
	}
	d.reconcile()
	var cands []key.Public
	for _, c := range ff.cands {
		cands = append(cands, c.Key)
	}
	if !slices.Contains(cands, pubKey(1)) || !slices.Contains(cands, pubKey(2)) || slices.Contains(cands, pubKey(3)) {
		t.Errorf("fast path candidates %v: want peers 1 and 2, not the one claiming our host address", cands)
	}
	if slices.Contains(tn.routes, netip.MustParsePrefix("10.32.0.2/32")) {
		t.Errorf("TUN routes %v include the prefix of a peer on VXLAN", tn.routes)
	}
	if !slices.Contains(tn.routes, netip.MustParsePrefix("10.32.0.3/32")) {
		t.Errorf("TUN routes %v lack the prefix of a WireGuard peer", tn.routes)
	}
	if n := len(ff.calls); n < 2 || ff.calls[n-2] != "set" || ff.calls[n-1] != "prune" {
		t.Errorf("fast path calls %v: want set, then prune after the TUN routes", ff.calls)
	}
	// WireGuard keeps every peer, so a fallback needs only routes.
	if len(tn.peers) != 3 {
		t.Errorf("WireGuard peers %d, want 3", len(tn.peers))
	}
	fast := ff.Stats()
	var row api.Connection
	row.Endpoint = "192.0.2.2:6783"
	d.addDatapath(&row, pubKey(1), fast)
	if row.Datapath != datapathVXLAN || row.Endpoint != "192.0.2.2:6784" || !row.Direct {
		t.Errorf("status row of the VXLAN peer: %+v", row)
	}
	row = api.Connection{Endpoint: "192.0.2.3:6783", Direct: true}
	d.addDatapath(&row, pubKey(2), fast)
	if row.Datapath != datapathUserspace || row.Endpoint != "192.0.2.3:6783" {
		t.Errorf("status row of the WireGuard peer: %+v", row)
	}
}

// TestDeviceNames: the kernel WireGuard and VXLAN devices are named after
// the TUN and fit IFNAMSIZ.
func TestDeviceNames(t *testing.T) {
	for _, f := range []struct {
		name func(string) string
		want string
	}{{kernelDeviceName, "kwweavewg0"}, {vxlanDeviceName, "vxweavewg0"}} {
		if n := f.name("weavewg0"); n != f.want {
			t.Errorf("got %q, want %q", n, f.want)
		}
		if n := f.name("abcdefghijklmno"); len(n) != 15 {
			t.Errorf("got %q (%d chars)", n, len(n))
		}
	}
}

func TestStatusSaysTrustedPairsAreUnencrypted(t *testing.T) {
	d := &Daemon{cfg: Config{Port: 6783}}
	if e := d.encryption(); e != encryption {
		t.Errorf("without trusted subnets: %q", e)
	}
	d.cfg.TrustedSubnets = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	if e := d.encryption(); !strings.Contains(e, "NONE") || !strings.Contains(e, "192.0.2.0/24") || !strings.Contains(e, "6784") {
		t.Errorf("with trusted subnets: %q", e)
	}
}
