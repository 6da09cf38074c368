package kernelwg

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
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
	fail    error // returned by the next ConfigureDevice
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
			f.dev.Peers = append(f.dev.Peers, wgtypes.Peer{PublicKey: pc.PublicKey})
			i = len(f.dev.Peers) - 1
		}
		p := &f.dev.Peers[i]
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
	fc := &fakeClient{}
	if err := p.init(fc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, fc, ns
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
	last := fc.configs[len(fc.configs)-1]
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
// messages to 6783 reach the socket on 6783, STUN and relay frames reach
// the one on 6785, and what 6785 sends leaves from 6783.
func TestSteering(t *testing.T) {
	netnstest.RequireNetAdmin(t)
	nsA, nsB := netnstest.New(t, "a"), netnstest.New(t, "b")
	netnstest.Run(t, "ip", "-n", nsA.Name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nsB.Name)
	for i, ns := range []*netnstest.NS{nsA, nsB} {
		netnstest.Run(t, "ip", "-n", ns.Name, "addr", "add", "192.0.2."+string(rune('1'+i))+"/24", "dev", "eth0")
		netnstest.Run(t, "ip", "-n", ns.Name, "link", "set", "eth0", "up")
	}
	cfg := Config{Port: 6783, SharedPort: 6785}
	if err := installSteering(nsB.H, cfg); err != nil {
		t.Fatal(err)
	}
	listen := func(ns *netnstest.NS, addr string) *net.UDPConn {
		var c *net.UDPConn
		var err error
		netnstest.Do(ns, func() { c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	kernel, user := listen(nsB, "0.0.0.0:6783"), listen(nsB, "0.0.0.0:6785")
	peer := listen(nsA, "192.0.2.1:6783")
	recv := func(c *net.UDPConn) ([]byte, netip.AddrPort) {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 2000)
		n, from, err := c.ReadFromUDPAddrPort(b)
		if err != nil {
			return nil, netip.AddrPort{}
		}
		return b[:n], from
	}
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.2:6783"))
	initiation := append([]byte{1, 0, 0, 0}, make([]byte, 144)...)
	transport := append([]byte{4, 0, 0, 0}, bytes.Repeat([]byte{0xab}, 60)...)
	stun := append([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}, make([]byte, 12)...)
	stunReply := append([]byte{0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}, make([]byte, 12)...)
	relay := append([]byte{0xf7, 0x01}, bytes.Repeat([]byte{3}, 40)...)
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
	// The userspace socket answers; the answer comes from 6783, intact.
	if _, err := user.WriteToUDP(stunReply, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:6783"))); err != nil {
		t.Fatal(err)
	}
	got, from := recv(peer)
	if !bytes.Equal(got, stunReply) || from.String() != "192.0.2.2:6783" {
		t.Errorf("the answer from 6785 arrived as %d bytes from %v; want it intact from 192.0.2.2:6783", len(got), from)
	}
	if err := removeSteering(nsB.H, 6783); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, "ip", "netns", "exec", nsB.Name, "nft", "list", "tables"); strings.Contains(out, "weavewg_split") {
		t.Errorf("the table is still there after removal:\n%s", out)
	}
}
