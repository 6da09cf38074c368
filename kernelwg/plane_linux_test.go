package kernelwg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weavewg/weavewg/internal/netnstest"
	"github.com/weavewg/weavewg/types/key"
)

// fakeClient is a wgctrl client over one device held in memory: it applies
// configurations the way the kernel does (wgctrl's documented semantics)
// and records them.
type fakeClient struct {
	dev     wgtypes.Device
	configs []wgtypes.Config
	fail    error        // returned by the next ConfigureDevice
	kicked  []key.Public // peers whose keepalive went from zero to non-zero, in order
	onKick  func(key.Public)
}

func (f *fakeClient) Device(name string) (*wgtypes.Device, error) {
	d := f.dev
	d.Name = name
	d.Peers = append([]wgtypes.Peer(nil), f.dev.Peers...)
	return &d, nil
}

func (f *fakeClient) ConfigureDevice(name string, cfg wgtypes.Config) error {
	if err := f.fail; err != nil {
		f.fail = nil
		return err
	}
	f.configs = append(f.configs, cfg)
	if cfg.PrivateKey != nil {
		f.dev.PrivateKey = *cfg.PrivateKey
	}
	if cfg.ListenPort != nil {
		f.dev.ListenPort = *cfg.ListenPort
	}
	if cfg.ReplacePeers {
		f.dev.Peers = nil
	}
	for _, pc := range cfg.Peers {
		i := -1
		for j, p := range f.dev.Peers {
			if p.PublicKey == pc.PublicKey {
				i = j
			}
		}
		if pc.Remove {
			if i >= 0 {
				f.dev.Peers = append(f.dev.Peers[:i], f.dev.Peers[i+1:]...)
			}
			continue
		}
		if i < 0 {
			if pc.UpdateOnly {
				continue
			}
			f.dev.Peers = append(f.dev.Peers, wgtypes.Peer{PublicKey: pc.PublicKey})
			i = len(f.dev.Peers) - 1
		}
		p := &f.dev.Peers[i]
		if pc.PersistentKeepaliveInterval != nil {
			// The kernel sends a keepalive (a handshake, without a
			// session) when the interval goes from zero to non-zero.
			if p.PersistentKeepaliveInterval == 0 && *pc.PersistentKeepaliveInterval != 0 {
				f.kicked = append(f.kicked, key.Public(pc.PublicKey))
				if f.onKick != nil {
					f.onKick(key.Public(pc.PublicKey))
				}
			}
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		p.AllowedIPs = append(p.AllowedIPs, pc.AllowedIPs...)
	}
	return nil
}

func (f *fakeClient) Close() error { return nil }

func (f *fakeClient) peer(k key.Public) *wgtypes.Peer {
	for i := range f.dev.Peers {
		if f.dev.Peers[i].PublicKey == wgtypes.Key(k) {
			return &f.dev.Peers[i]
		}
	}
	return nil
}

// fakePlane is a Plane over a stand-in link in a namespace of its own (this
// machine's kernel may have no WireGuard) and a fake wgctrl client.
func fakePlane(t *testing.T) (*Plane, *fakeClient, *netnstest.NS) {
	netnstest.RequireNetAdmin(t)
	ns := netnstest.New(t, "kwg")
	// A veth stands in for the link (no dummy module here either).
	netnstest.Run(t, "ip", "-n", ns.Name, "link", "add", "kwweavewg0", "type", "veth", "peer", "name", "kwpeer")
	netnstest.Run(t, "ip", "-n", ns.Name, "link", "set", "kwpeer", "up")
	netnstest.Run(t, "ip", "-n", ns.Name, "link", "set", "kwweavewg0", "up")
	netnstest.Run(t, "ip", "-n", ns.Name, "addr", "add", "10.32.0.1/32", "dev", "lo") // the routes' source
	nl, err := netlink.NewHandleAt(ns.H)
	if err != nil {
		t.Fatal(err)
	}
	l, err := nl.LinkByName("kwweavewg0")
	if err != nil {
		t.Fatal(err)
	}
	priv := key.Private{9}
	p := &Plane{cfg: Config{Name: "kwweavewg0", Port: 6783, SharedPort: 6785, MTU: 1420, Private: priv,
		PSK: key.Secret{7}, HostIP: netip.MustParseAddr("10.32.0.1"), Logger: netnstest.Logger(t, "kwg: ")},
		nl: nl, index: l.Attrs().Index}
	// Its own handle on the namespace (Close closes it; a zero handle
	// would close fd 0).
	if p.ns, err = netns.GetFromName(ns.Name); err != nil {
		t.Fatal(err)
	}
	fc := &fakeClient{}
	if err := p.init(fc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, fc, ns
}

// steerWithFailingWrites installs p's steering sets and makes their writes
// fail while *fail (the pointer returned) is not nil.
func steerWithFailingWrites(t *testing.T, p *Plane) *error {
	t.Helper()
	if err := installSteering(p.ns, p.cfg); err != nil {
		t.Fatal(err)
	}
	p.steering = true
	fail := new(error)
	p.writeSteering = func(ns netns.NsHandle, port uint16, eps []netip.AddrPort) error {
		if *fail != nil {
			return *fail
		}
		return setKernelEndpoints(ns, port, eps)
	}
	return fail
}

// TestPlaneConfiguresPeersAndRoutes: the device gets the private key, the
// port, each peer with the network secret as preshared key, its endpoint
// and AllowedIPs; the peers' prefixes are routed into it; an unchanged
// peer is not rewritten, a roamed endpoint is not reset, a departed peer is
// removed and its routes pruned.
func TestPlaneConfiguresPeersAndRoutes(t *testing.T) {
	p, fc, ns := fakePlane(t)
	if fc.dev.PrivateKey != wgtypes.Key(p.cfg.Private) || fc.dev.ListenPort != 6783 {
		t.Fatalf("device: key %v port %d; want the host's key and 6783", fc.dev.PrivateKey, fc.dev.ListenPort)
	}
	var kB, kC key.Public
	kB[0], kC[0] = 2, 3
	epB := netip.MustParseAddrPort("192.0.2.2:6783")
	peerB := Peer{Key: kB, Endpoint: epB, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32"), netip.MustParsePrefix("10.40.0.0/14")}}
	peerC := Peer{Key: kC, Endpoint: netip.MustParseAddrPort("192.0.2.3:6783"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.3/32")}}
	noEndpoint := Peer{Key: key.Public{4}, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.4/32")}}
	got, err := p.SetPeers([]Peer{peerB, peerC, noEndpoint})
	if err != nil {
		t.Fatal(err)
	}
	if !got[kB] || !got[kC] || len(got) != 2 {
		t.Fatalf("carried %v; want B and C (not the peer without an endpoint)", got)
	}
	b := fc.peer(kB)
	if b == nil || b.PresharedKey != wgtypes.Key(p.cfg.PSK) || b.Endpoint.String() != epB.String() {
		t.Fatalf("peer B on the device: %+v", b)
	}
	if s := allowed(b); s != "10.32.0.2/32 10.40.0.0/14" {
		t.Errorf("B's AllowedIPs %q", s)
	}
	routes := netnstest.Run(t, "ip", "-n", ns.Name, "route", "show", "dev", "kwweavewg0")
	for _, r := range []string{"10.32.0.2 proto 87 scope link src 10.32.0.1", "10.40.0.0/14", "10.32.0.3"} {
		if !strings.Contains(routes, r) {
			t.Errorf("no route %q into the device:\n%s", r, routes)
		}
	}

	// The kernel roams B; the same peers again write nothing.
	roamed := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 9), Port: 40000}
	b.Endpoint = roamed
	n := len(fc.configs)
	if _, err := p.SetPeers([]Peer{peerB, peerC}); err != nil {
		t.Fatal(err)
	}
	if len(fc.configs) != n {
		t.Errorf("unchanged peers were written again: %+v", fc.configs[n:])
	}
	// A new prefix for B rewrites its AllowedIPs but not its endpoint.
	peerB.Prefixes = append(peerB.Prefixes, netip.MustParsePrefix("10.44.0.0/16"))
	if _, err := p.SetPeers([]Peer{peerB}); err != nil {
		t.Fatal(err)
	}
	if b := fc.peer(kB); b.Endpoint.String() != roamed.String() || allowed(b) != "10.32.0.2/32 10.40.0.0/14 10.44.0.0/16" {
		t.Errorf("after B's new prefix: endpoint %v (want the roamed %v), AllowedIPs %q", b.Endpoint, roamed, allowed(b))
	}
	if fc.peer(kC) != nil {
		t.Error("C, no longer given, is still on the device")
	}
	if err := p.PruneRoutes(); err != nil {
		t.Fatal(err)
	}
	routes = netnstest.Run(t, "ip", "-n", ns.Name, "route", "show", "dev", "kwweavewg0")
	if strings.Contains(routes, "10.32.0.3") || !strings.Contains(routes, "10.44.0.0/16") {
		t.Errorf("after C left: routes\n%s", routes)
	}

	// Stats are the device's.
	fc.peer(kB).LastHandshakeTime = time.Unix(1700000000, 0)
	fc.peer(kB).ReceiveBytes = 1234
	st := p.Stats()[kB]
	if st.RxBytes != 1234 || st.LastHandshake.Unix() != 1700000000 || st.Endpoint.String() != "198.51.100.9:40000" {
		t.Errorf("stats of B: %+v", st)
	}
}

// TestPlaneRouteMTU: a peer behind a smaller path gets that MTU (and the
// matching advmss) on its routes into the device, a peer whose MTU is not
// below the device's gets none, and a change of MTU alone moves the route
// but writes nothing to the device.
func TestPlaneRouteMTU(t *testing.T) {
	p, fc, ns := fakePlane(t)
	small := Peer{Key: key.Public{2}, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}, MTU: 1284}
	full := Peer{Key: key.Public{3}, Endpoint: netip.MustParseAddrPort("192.0.2.3:6783"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.3/32")}, MTU: 1420}
	if _, err := p.SetPeers([]Peer{small, full}); err != nil {
		t.Fatal(err)
	}
	route := func(dst string) string {
		return strings.TrimSpace(netnstest.Run(t, "ip", "-n", ns.Name, "route", "show", dst, "dev", "kwweavewg0"))
	}
	if r := route("10.32.0.2"); !strings.Contains(r, "mtu 1284") || !strings.Contains(r, "advmss 1244") {
		t.Errorf("route of the peer behind a 1284 path: %q; want mtu 1284 advmss 1244", r)
	}
	if r := route("10.32.0.3"); r == "" || strings.Contains(r, "mtu") {
		t.Errorf("route of the full-size peer: %q; want one without an MTU of its own", r)
	}
	n := len(fc.configs)
	small.MTU = 0
	if _, err := p.SetPeers([]Peer{small, full}); err != nil {
		t.Fatal(err)
	}
	if r := route("10.32.0.2"); r == "" || strings.Contains(r, "mtu") {
		t.Errorf("route after the MTU went back to the device's: %q; want no MTU of its own", r)
	}
	if len(fc.configs) != n {
		t.Errorf("a change of MTU wrote to the device: %+v", fc.configs[n:])
	}
}

// TestPlaneRoutesGetTheHostIPWhenKnown: a host joining for the first time
// has no overlay address when the device is made, so its routes have no
// source; once SetHostIP gives it, the next SetPeers routes with it.
func TestPlaneRoutesGetTheHostIPWhenKnown(t *testing.T) {
	p, _, ns := fakePlane(t)
	p.cfg.HostIP = netip.Addr{}
	peer := Peer{Key: key.Public{2}, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}}
	if _, err := p.SetPeers([]Peer{peer}); err != nil {
		t.Fatal(err)
	}
	route := func() string {
		return strings.TrimSpace(netnstest.Run(t, "ip", "-n", ns.Name, "route", "show", "10.32.0.2", "dev", "kwweavewg0"))
	}
	if r := route(); r == "" || strings.Contains(r, "src") {
		t.Fatalf("route before the host has an address: %q; want one without a source", r)
	}
	p.SetHostIP(netip.Addr{}) // not known yet: nothing changes
	p.SetHostIP(netip.MustParseAddr("10.32.0.1"))
	if _, err := p.SetPeers([]Peer{peer}); err != nil {
		t.Fatal(err)
	}
	if r := route(); !strings.Contains(r, "src 10.32.0.1") {
		t.Errorf("route once the host has 10.32.0.1: %q; want it as the source", r)
	}
}

// TestPlanePeerMovesAwayAndBack: a peer that becomes relayed leaves the
// device and its route; when its direct path comes back it is written
// whole again, at its endpoint, with its route.
func TestPlanePeerMovesAwayAndBack(t *testing.T) {
	p, fc, ns := fakePlane(t)
	kB := key.Public{2}
	peerB := Peer{Key: kB, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}}
	check := func(when string, on bool) {
		t.Helper()
		route := netnstest.Run(t, "ip", "-n", ns.Name, "route", "show", "dev", "kwweavewg0")
		b := fc.peer(kB)
		if got := b != nil && b.Endpoint.String() == "192.0.2.2:6783" && allowed(b) == "10.32.0.2/32"; got != on {
			t.Errorf("%s: B on the device %v (%+v); want %v", when, got, b, on)
		}
		if got := strings.Contains(route, "10.32.0.2"); got != on {
			t.Errorf("%s: B's route into the device %v; want %v:\n%s", when, got, on, route)
		}
	}
	for i, on := range []bool{true, false, true, false, true} {
		var peers []Peer
		if on {
			peers = []Peer{peerB}
		}
		if _, err := p.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
		if err := p.PruneRoutes(); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("move %d", i), on)
	}
}

// TestPlaneKicksAHandshake: a peer that joins the device, or whose
// endpoint changes, gets a keepalive interval for a moment (the kernel
// starts a handshake with it then), set back to zero at once; a peer
// written again for another reason (a new prefix) is not kicked.
func TestPlaneKicksAHandshake(t *testing.T) {
	p, fc, _ := fakePlane(t)
	kB, kC := key.Public{2}, key.Public{3}
	peerB := Peer{Key: kB, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}}
	peerC := Peer{Key: kC, Endpoint: netip.MustParseAddrPort("192.0.2.3:6783"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.3/32")}}
	step := func(when string, want []key.Public, peers ...Peer) {
		t.Helper()
		fc.kicked = nil
		if _, err := p.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(fc.kicked) != fmt.Sprint(want) {
			t.Errorf("%s: kicked %v; want %v", when, fc.kicked, want)
		}
		for _, pr := range fc.dev.Peers {
			if pr.PersistentKeepaliveInterval != 0 {
				t.Errorf("%s: peer %v left with a keepalive of %v", when, pr.PublicKey, pr.PersistentKeepaliveInterval)
			}
		}
	}
	step("B and C join", []key.Public{kB, kC}, peerB, peerC)
	step("nothing changes", nil, peerB, peerC)
	peerB.Prefixes = append(peerB.Prefixes, netip.MustParsePrefix("10.40.0.0/14"))
	step("B gets a prefix", nil, peerB, peerC)
	peerC.Endpoint = netip.MustParseAddrPort("198.51.100.3:40000")
	step("C's endpoint changes", []key.Public{kC}, peerB, peerC)
	step("C leaves", nil, peerB)
	step("C comes back", []key.Public{kC}, peerB, peerC)
}

// TestPlaneKicksAfterSteering: when the kernel starts the handshake with
// a peer that joined the device (or moved), the steering set already
// holds the peer's endpoint, so that the peer's answer reaches the kernel
// socket. Kicked before the set had it, an answer quicker than the set's
// write went to wireguard-go, which dropped it, and the pair waited 5 s
// for the kernel's next try (the VM test's first pings).
func TestPlaneKicksAfterSteering(t *testing.T) {
	p, fc, _ := fakePlane(t)
	steerWithFailingWrites(t, p)
	kB := key.Public{2}
	peerB := Peer{Key: kB, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}}
	var atKick []string // the set when each kick was sent
	fc.onKick = func(k key.Public) {
		atKick = append(atKick, fmt.Sprint(steeredEndpoints(t, p)))
	}
	step := func(when string) {
		t.Helper()
		atKick = nil
		if _, err := p.SetPeers([]Peer{peerB}); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprint([]netip.AddrPort{peerB.Endpoint})
		if len(atKick) != 1 || atKick[0] != want {
			t.Errorf("%s: the steering set when B was kicked: %v; want one kick with %s in it", when, atKick, want)
		}
	}
	step("B joins")
	peerB.Endpoint = netip.MustParseAddrPort("198.51.100.2:40000")
	step("B moves")
}

// TestPlaneSteeredAfterFailedWrite: Steered says what the steering sets
// hold, which after a failed write is not the device's peers: a peer that
// joined then is not steered (its datagrams, and the answers to
// wireguard-go's initiations, still reach wireguard-go), one that left
// still is; the next write that succeeds makes them the peers' again.
func TestPlaneSteeredAfterFailedWrite(t *testing.T) {
	p, _, _ := fakePlane(t)
	fail := steerWithFailingWrites(t, p)
	peer := func(n byte, ep string) Peer {
		return Peer{Key: key.Public{n}, Endpoint: netip.MustParseAddrPort(ep),
			Prefixes: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 32, 0, n}), 32)}}
	}
	peerB, peerC := peer(2, "192.0.2.2:6783"), peer(3, "192.0.2.3:6783")
	check := func(when string, carried map[key.Public]bool, want ...Peer) {
		t.Helper()
		var eps []netip.AddrPort
		for _, w := range want {
			eps = append(eps, w.Endpoint)
		}
		if got, inSets := p.Steered(), steeredEndpoints(t, p); fmt.Sprint(got) != fmt.Sprint(eps) || fmt.Sprint(inSets) != fmt.Sprint(eps) {
			t.Errorf("%s: Steered %v, the sets %v; want both %v (carried: %v)", when, got, inSets, eps, carried)
		}
	}
	on, err := p.SetPeers([]Peer{peerB})
	if err != nil {
		t.Fatal(err)
	}
	check("B joins", on, peerB)
	*fail = errors.New("netlink: no buffer space")
	on, err = p.SetPeers([]Peer{peerB, peerC})
	if err == nil || !on[peerC.Key] {
		t.Fatalf("C joins while the sets cannot be written: carried %v, err %v; want C on the device and an error", on, err)
	}
	check("C joins, the write fails", on, peerB)
	on, _ = p.SetPeers([]Peer{peerC})
	check("B leaves, the write fails", on, peerB)
	*fail = nil
	on, err = p.SetPeers([]Peer{peerC})
	if err != nil {
		t.Fatal(err)
	}
	check("the write succeeds", on, peerC)
}

// TestPlaneKicksOnceSteered: a peer that joins the device while the
// steering sets cannot be written is not kicked then (the kernel's
// initiation would be answered to wireguard-go, which drops the answer,
// and the peer would have dropped its own handshake state for it), but at
// the next SetPeers whose write succeeds, once, with its endpoint in the
// set.
func TestPlaneKicksOnceSteered(t *testing.T) {
	p, fc, _ := fakePlane(t)
	fail := steerWithFailingWrites(t, p)
	peerB := Peer{Key: key.Public{2}, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}}
	var atKick []string // the set when each kick was sent
	fc.onKick = func(k key.Public) { atKick = append(atKick, fmt.Sprint(steeredEndpoints(t, p))) }
	*fail = errors.New("netlink: no buffer space")
	if _, err := p.SetPeers([]Peer{peerB}); err == nil {
		t.Fatal("SetPeers with the sets' write failing: no error")
	}
	if len(atKick) != 0 {
		t.Errorf("B was kicked while the sets could not hold its endpoint (the set then: %v)", atKick)
	}
	*fail = nil
	if _, err := p.SetPeers([]Peer{peerB}); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint([]netip.AddrPort{peerB.Endpoint}); len(atKick) != 1 || atKick[0] != want {
		t.Errorf("once the write succeeded, kicks with the set %v; want one with %s", atKick, want)
	}
	atKick = nil
	if _, err := p.SetPeers([]Peer{peerB}); err != nil {
		t.Fatal(err)
	}
	if len(atKick) != 0 {
		t.Errorf("B kicked again with nothing changed: %v", atKick)
	}
}

// steeredEndpoints reads the IPv4 steering set of p's table from the
// kernel.
func steeredEndpoints(t *testing.T, p *Plane) []netip.AddrPort {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(p.ns)))
	if err != nil {
		t.Fatal(err)
	}
	set4, _ := kernelSets(steeringTable(p.cfg.Port))
	els, err := c.GetSetElements(set4)
	if err != nil {
		t.Fatal(err)
	}
	var eps []netip.AddrPort
	for _, e := range els {
		if len(e.Key) < 6 {
			t.Fatalf("set element %x: want an address and a port", e.Key)
		}
		a, _ := netip.AddrFromSlice(e.Key[:4])
		eps = append(eps, netip.AddrPortFrom(a, binary.BigEndian.Uint16(e.Key[4:6])))
	}
	return eps
}

// TestPlaneRewritesAfterFailure: a failed configuration leaves the device
// unknown, so the next one replaces the whole peer list.
func TestPlaneRewritesAfterFailure(t *testing.T) {
	p, fc, _ := fakePlane(t)
	var kB key.Public
	kB[0] = 2
	peerB := Peer{Key: kB, Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.32.0.2/32")}}
	fc.fail = errors.New("netlink: no buffer space")
	if got, err := p.SetPeers([]Peer{peerB}); err == nil || got[kB] {
		t.Fatalf("a failed write: carried %v, err %v; want an error and nothing carried", got, err)
	}
	if _, err := p.SetPeers([]Peer{peerB}); err != nil {
		t.Fatal(err)
	}
	var last wgtypes.Config
	for _, c := range fc.configs {
		if c.ReplacePeers {
			last = c
		}
	}
	if !last.ReplacePeers || len(last.Peers) != 1 || last.Peers[0].Endpoint == nil {
		t.Errorf("after a failure: %+v; want the peer list replaced, B written whole", last)
	}
}

func allowed(p *wgtypes.Peer) string {
	var s []string
	for _, a := range p.AllowedIPs {
		s = append(s, a.String())
	}
	return strings.Join(s, " ")
}

// TestSteering: with the port-sharing table in a namespace, WireGuard
// messages to 6783 from a kernel peer's endpoint reach the socket on 6783;
// WireGuard messages from any other endpoint (a peer the kernel device
// does not carry), STUN and relay frames reach the one on 6785; and what
// 6785 sends leaves from 6783.
// steeringBed is two namespaces on one link, a (192.0.2.1) and b
// (192.0.2.2), with the port-sharing table for 6783 and 6785 in b.
func steeringBed(t *testing.T) (nsA, nsB *netnstest.NS) {
	netnstest.RequireNetAdmin(t)
	nsA, nsB = netnstest.New(t, "a"), netnstest.New(t, "b")
	netnstest.Run(t, "ip", "-n", nsA.Name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nsB.Name)
	for i, ns := range []*netnstest.NS{nsA, nsB} {
		netnstest.Run(t, "ip", "-n", ns.Name, "addr", "add", "192.0.2."+string(rune('1'+i))+"/24", "dev", "eth0")
		netnstest.Run(t, "ip", "-n", ns.Name, "link", "set", "eth0", "up")
	}
	if err := installSteering(nsB.H, Config{Port: 6783, SharedPort: 6785}); err != nil {
		t.Fatal(err)
	}
	return nsA, nsB
}

// listenUDP opens a UDP socket on addr in ns, closed when the test ends.
func listenUDP(t *testing.T, ns *netnstest.NS, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	var err error
	netnstest.Do(ns, func() { c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recvWithin reads one datagram from c, or returns nil after wait.
func recvWithin(c *net.UDPConn, wait time.Duration) ([]byte, netip.AddrPort) {
	c.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 2000)
	n, from, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return b[:n], from
}

// Datagrams as the steering table tells them apart by their first bytes.
var (
	wgInitiation = append([]byte{1, 0, 0, 0}, make([]byte, 144)...)
	wgTransport  = append([]byte{4, 0, 0, 0}, bytes.Repeat([]byte{0xab}, 60)...)
	stunRequest  = append([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}, make([]byte, 12)...)
	stunResponse = append([]byte{0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}, make([]byte, 12)...)
	relayFrame   = append([]byte{0xf7, 0x01}, bytes.Repeat([]byte{3}, 40)...)
)

func TestSteering(t *testing.T) {
	nsA, nsB := steeringBed(t)
	listen := func(ns *netnstest.NS, addr string) *net.UDPConn { return listenUDP(t, ns, addr) }
	kernel, user := listen(nsB, "0.0.0.0:6783"), listen(nsB, "0.0.0.0:6785")
	peer := listen(nsA, "192.0.2.1:6783")
	recv := func(c *net.UDPConn) ([]byte, netip.AddrPort) { return recvWithin(c, 3*time.Second) }
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.2:6783"))
	initiation, transport := wgInitiation, wgTransport
	// Before the device carries the peer (a peer we relay, that sends to
	// us directly), its WireGuard messages reach the userspace socket.
	for _, msg := range [][]byte{initiation, transport} {
		if _, err := peer.WriteToUDP(msg, dst); err != nil {
			t.Fatal(err)
		}
		if got, _ := recv(user); !bytes.Equal(got, msg) {
			t.Errorf("WireGuard type %d from a peer not on the kernel device: %d bytes on the userspace socket; want it intact there", msg[0], len(got))
		}
	}
	if err := setKernelEndpoints(nsB.H, 6783, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:6783"),
		netip.MustParseAddrPort("[2001:db8::1]:6783")}); err != nil {
		t.Fatal(err)
	}
	stun, stunReply, relay := stunRequest, stunResponse, relayFrame
	for _, tc := range []struct {
		name string
		msg  []byte
		to   *net.UDPConn
	}{{"initiation", initiation, kernel}, {"transport", transport, kernel},
		{"stun request", stun, user}, {"stun response", stunReply, user}, {"relay frame", relay, user}} {
		if _, err := peer.WriteToUDP(tc.msg, dst); err != nil {
			t.Fatal(err)
		}
		other := user
		if tc.to == user {
			other = kernel
		}
		if got, _ := recv(tc.to); !bytes.Equal(got, tc.msg) {
			t.Errorf("%s did not arrive intact on the right socket (got %d bytes)", tc.name, len(got))
			other.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, _, err := other.ReadFromUDP(make([]byte, 2000)); err == nil {
				t.Errorf("%s arrived on the other socket (%d bytes)", tc.name, n)
			}
		}
	}
	// The same address from another port is another endpoint: not the
	// kernel's, also when its datagram has no UDP checksum.
	other := listen(nsA, "192.0.2.1:7000")
	if _, err := other.WriteToUDP(transport, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := recv(user); !bytes.Equal(got, transport) {
		t.Errorf("a data message from 192.0.2.1:7000, not a kernel peer's endpoint: %d bytes on the userspace socket; want it intact", len(got))
	}
	sendRaw(t, nsA, 7000, netip.MustParseAddrPort("192.0.2.2:6783"), transport)
	if got, _ := recv(user); !bytes.Equal(got, transport) {
		t.Errorf("a data message without checksum from 192.0.2.1:7000: %d bytes on the userspace socket; want it intact", len(got))
	}
	// The peer leaves the device: its messages go to the userspace socket
	// again.
	if err := setKernelEndpoints(nsB.H, 6783, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteToUDP(transport, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := recv(user); !bytes.Equal(got, transport) {
		t.Errorf("a data message from a peer that left the kernel device: %d bytes on the userspace socket; want it intact", len(got))
	}
	// The userspace socket answers; the answer comes from 6783, intact.
	if _, err := user.WriteToUDP(stunReply, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:6783"))); err != nil {
		t.Fatal(err)
	}
	got, from := recv(peer)
	if !bytes.Equal(got, stunReply) || from.String() != "192.0.2.2:6783" {
		t.Errorf("the answer from 6785 arrived as %d bytes from %v; want it intact from 192.0.2.2:6783", len(got), from)
	}
	// Datagrams without a UDP checksum (zero, allowed over IPv4: the path
	// MTU probes, which leave through a raw socket) arrive intact both
	// ways: the port rewrite must not turn the zero into a wrong checksum.
	zeroSum := append([]byte{0xf7, 0x03}, bytes.Repeat([]byte{5}, 1200)...)
	sendRaw(t, nsA, 6783, netip.MustParseAddrPort("192.0.2.2:6783"), zeroSum)
	if got, _ := recv(user); !bytes.Equal(got, zeroSum) {
		t.Errorf("a datagram without checksum to 6783 reached the userspace socket as %d bytes; want %d intact", len(got), len(zeroSum))
	}
	sendRaw(t, nsB, 6785, netip.MustParseAddrPort("192.0.2.1:6783"), zeroSum)
	if got, from := recv(peer); !bytes.Equal(got, zeroSum) || from.String() != "192.0.2.2:6783" {
		t.Errorf("a datagram without checksum from 6785 arrived as %d bytes from %v; want %d intact from 192.0.2.2:6783", len(got), from, len(zeroSum))
	}
	if err := removeSteering(nsB.H, 6783); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, "ip", "netns", "exec", nsB.Name, "nft", "list", "tables"); strings.Contains(out, "weavewg_split") {
		t.Errorf("the table is still there after removal:\n%s", out)
	}
}

// TestSteeringBehindHostFirewall: a host firewall on the input hook sees
// the userspace socket's traffic as the peer and 6783, as on a userspace
// host, so both ways ufw is used with weavewg pass it: its default-deny
// input with `ufw allow 6783` (a stateless accept of the port), and with
// no allow rule (only replies to what the host sent, ct state
// established). Each is modelled by the rules of ufw's that decide (its
// ct state rules, the allow rule, policy drop) in an nftables chain at
// ufw's priority.
func TestSteeringBehindHostFirewall(t *testing.T) {
	const base = "add table inet hostfw; " +
		"add chain inet hostfw input { type filter hook input priority filter; policy drop; }; " +
		"add rule inet hostfw input ct state established,related accept; " +
		"add rule inet hostfw input ct state invalid drop; " +
		"add rule inet hostfw input iif lo accept"
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.2:6783"))
	peerEP := netip.MustParseAddrPort("192.0.2.1:6783")

	t.Run("ufw allow 6783", func(t *testing.T) {
		nsA, nsB := steeringBed(t)
		netnstest.Run(t, "ip", "netns", "exec", nsB.Name, "nft", base+"; add rule inet hostfw input udp dport 6783 accept")
		kernel, user := listenUDP(t, nsB, "0.0.0.0:6783"), listenUDP(t, nsB, "0.0.0.0:6785")
		closed := listenUDP(t, nsB, "0.0.0.0:6790")
		peer, other := listenUDP(t, nsA, "192.0.2.1:6783"), listenUDP(t, nsA, "192.0.2.1:7000")
		// The firewall is there: a port it does not admit stays closed.
		if _, err := peer.WriteToUDP(relayFrame, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.2:6790"))); err != nil {
			t.Fatal(err)
		}
		if got, _ := recvWithin(closed, 500*time.Millisecond); got != nil {
			t.Fatalf("the modelled firewall admitted a datagram to port 6790; the test proves nothing")
		}
		if err := setKernelEndpoints(nsB.H, 6783, []netip.AddrPort{peerEP}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			from *net.UDPConn
			msg  []byte
			to   *net.UDPConn
		}{
			{"a relay frame", peer, relayFrame, user},
			{"a STUN request", peer, stunRequest, user},
			{"a kernel peer's data message", peer, wgTransport, kernel},
			{"an initiation from an endpoint not on the kernel device", other, wgInitiation, user},
		} {
			if _, err := tc.from.WriteToUDP(tc.msg, dst); err != nil {
				t.Fatal(err)
			}
			if got, _ := recvWithin(tc.to, 3*time.Second); !bytes.Equal(got, tc.msg) {
				t.Errorf("%s to 6783, which the firewall admits, arrived as %d bytes; want it intact on its socket", tc.name, len(got))
			}
		}
	})

	t.Run("ufw default, replies only", func(t *testing.T) {
		nsA, nsB := steeringBed(t)
		netnstest.Run(t, "ip", "netns", "exec", nsB.Name, "nft", base)
		kernel, user := listenUDP(t, nsB, "0.0.0.0:6783"), listenUDP(t, nsB, "0.0.0.0:6785")
		peer := listenUDP(t, nsA, "192.0.2.1:6783")
		// The firewall is there: what the host did not ask for is dropped.
		if _, err := peer.WriteToUDP(relayFrame, dst); err != nil {
			t.Fatal(err)
		}
		if got, _ := recvWithin(user, 500*time.Millisecond); got != nil {
			t.Fatalf("the modelled firewall admitted an unsolicited datagram; the test proves nothing")
		}
		// The userspace socket asks; the peer's answer comes back in.
		if _, err := user.WriteToUDP(stunRequest, net.UDPAddrFromAddrPort(peerEP)); err != nil {
			t.Fatal(err)
		}
		if got, from := recvWithin(peer, 3*time.Second); !bytes.Equal(got, stunRequest) || from.String() != "192.0.2.2:6783" {
			t.Fatalf("the userspace socket's request arrived as %d bytes from %v; want it intact from 192.0.2.2:6783", len(got), from)
		}
		for _, msg := range [][]byte{stunResponse, relayFrame} {
			if _, err := peer.WriteToUDP(msg, dst); err != nil {
				t.Fatal(err)
			}
			if got, _ := recvWithin(user, 3*time.Second); !bytes.Equal(got, msg) {
				t.Errorf("the peer's reply (first byte %#x) to the userspace socket's request arrived as %d bytes; want it intact", msg[0], len(got))
			}
		}
		// Both sockets' datagrams are one flow to the firewall: the kernel
		// peer's data comes in on it too.
		if err := setKernelEndpoints(nsB.H, 6783, []netip.AddrPort{peerEP}); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.WriteToUDP(wgTransport, dst); err != nil {
			t.Fatal(err)
		}
		if got, _ := recvWithin(kernel, 3*time.Second); !bytes.Equal(got, wgTransport) {
			t.Errorf("the kernel peer's data message on the flow the host opened arrived as %d bytes; want it intact on 6783", len(got))
		}
	})
}

// sendRaw sends payload from UDP port sport to dst in ns through a raw
// socket, with the UDP checksum left zero, as tunnel's path MTU prober does.
func sendRaw(t *testing.T, ns *netnstest.NS, sport uint16, dst netip.AddrPort, payload []byte) {
	t.Helper()
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:], 0x4000)
	p[8], p[9] = 64, unix.IPPROTO_UDP
	d4 := dst.Addr().As4()
	copy(p[16:20], d4[:])
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	var err error
	netnstest.Do(ns, func() {
		var fd int
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return
		}
		defer unix.Close(fd)
		err = unix.Sendto(fd, p, 0, &unix.SockaddrInet4{Addr: d4})
	})
	if err != nil {
		t.Fatalf("raw send to %s: %v", dst, err)
	}
}
