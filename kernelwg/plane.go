// Package kernelwg owns the kernel WireGuard data plane (--datapath
// kernel): a `wireguard` link configured through wgctrl with the same
// private key and preshared key as the userspace device, carrying the peers
// that have a direct path; the routes that send those peers' overlay
// prefixes into it; and the nftables table that lets the kernel's socket
// and the userspace one share the UDP port (steer_linux.go).
//
// The split. The kernel device listens on --port; the userspace socket
// (wireguard-go, STUN, relay frames, path probes) moves to the steered port
// (--port+2). Relayed peers stay on wireguard-go, because relay frames are
// userspace; the daemon decides which peer goes where and routes the rest
// into the TUN. Everything is created in the network namespace of the
// thread that calls New.
package kernelwg

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weavewg/weavewg/internal/ownroutes"
	"github.com/weavewg/weavewg/types/key"
)

// ErrUnsupported is returned by New when the kernel refuses to create a
// `wireguard` link (no module, or a kernel built without it).
var ErrUnsupported = errors.New("the kernel cannot create a wireguard link (no WireGuard module)")

// Client is what a Plane uses of wgctrl.Client; a fake stands in for it in
// the tests.
type Client interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

var _ Client = (*wgctrl.Client)(nil)

// Config is what a Plane needs.
type Config struct {
	Name string // the wireguard link, e.g. kwweavewg0
	// Port is the kernel socket's UDP port (--port), SharedPort the
	// userspace socket's, to which non-WireGuard datagrams for Port are
	// steered and from which they leave as Port.
	Port, SharedPort uint16
	MTU              int
	Private          key.Private
	PSK              key.Secret // the network secret, as wireguard-go has it
	HostIP           netip.Addr // the routes' source address; SetHostIP changes it
	Logger           *slog.Logger
}

// Peer is one peer the kernel device is to carry.
type Peer struct {
	Key      key.Public
	Endpoint netip.AddrPort // its direct address, as the path owner chose it
	Prefixes []netip.Prefix // its AllowedIPs, routed into the device
	// PSK is the pair's preshared key (a rotated network secret's epoch,
	// discovery/secret.go); zero: Config.PSK.
	PSK key.Secret
	// MTU is the peer's overlay MTU when its path is smaller than the
	// device's (the tunnel's path MTU search, tunnel/mtu.go): its routes
	// carry it, so the host answers larger DF packets with "fragmentation
	// needed" and its own sockets use it. 0 or not below Config.MTU: none.
	MTU int
}

// PeerStats is the kernel's view of one peer.
type PeerStats struct {
	Endpoint      netip.AddrPort // as the kernel last saw it (it roams)
	LastHandshake time.Time      // zero if none
	RxBytes       uint64
	TxBytes       uint64
}

// applied is one peer as last written to the device.
type applied struct {
	endpoint netip.AddrPort
	allowed  []netip.Prefix // masked, sorted, no duplicates
	psk      key.Secret     // zero: Config.PSK
	mtu      int            // of its routes; not part of the device's configuration
}

// Plane is the kernel WireGuard device of one host.
type Plane struct {
	// Constant after New.
	cfg   Config
	log   *slog.Logger
	ns    netns.NsHandle
	nl    *netlink.Handle
	index int
	wg    Client

	// mu guards what follows.
	mu      sync.Mutex
	closed  bool
	synced  bool // false after a failed ConfigureDevice: rewrite every peer
	peers   map[key.Public]applied
	routes  map[netip.Prefix]bool // routes into the device as last set
	ownLink bool                  // New made the link (Close deletes it)
	// steering: the port-sharing table is there; SetPeers keeps its sets
	// to steered (sorted), the endpoints of the device's peers.
	steering bool
	steered  []netip.AddrPort
	steerBad bool // the last write failed: the sets are still steered
	// writeSteering writes the sets (setKernelEndpoints; the tests
	// make it fail).
	writeSteering func(ns netns.NsHandle, port uint16, eps []netip.AddrPort) error
	// unkicked: peers that joined the device (or moved) while the sets
	// could not be given their endpoint; kicked once they hold it.
	unkicked map[key.Public]bool
}

// kickInterval is the persistent keepalive a peer is given for a moment
// when it joins the device: the kernel sends a keepalive the moment a
// peer's interval goes from zero to non-zero, and, having no session with
// a new peer, starts a handshake for it. It is set back to zero at once
// (see SetPeers).
const kickInterval = 25 * time.Second

// New creates the wireguard link (replacing one a crashed run left),
// configures its key and port, and installs the port-sharing table. It
// returns an error wrapping ErrUnsupported when the kernel has no
// WireGuard.
func New(cfg Config) (*Plane, error) {
	switch {
	case cfg.Name == "" || len(cfg.Name) > unix.IFNAMSIZ-1:
		return nil, fmt.Errorf("kernel wireguard: device name %q must have 1 to 15 characters", cfg.Name)
	case cfg.Port == 0 || cfg.SharedPort == 0 || cfg.Port == cfg.SharedPort:
		return nil, fmt.Errorf("kernel wireguard: ports %d and %d must be two ports", cfg.Port, cfg.SharedPort)
	case cfg.Private.IsZero():
		return nil, errors.New("kernel wireguard: no private key")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("kernel wireguard: reading the network namespace: %w", err)
	}
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("kernel wireguard: opening netlink: %w", err)
	}
	p := &Plane{cfg: cfg, ns: ns, nl: nl}
	ok := false
	defer func() {
		if !ok {
			p.teardown()
		}
	}()
	if old, err := nl.LinkByName(cfg.Name); err == nil {
		nl.LinkDel(old) // left by a run that crashed
	}
	link := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.MTU}}
	if err := nl.LinkAdd(link); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	p.ownLink = true
	l, err := nl.LinkByName(cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("kernel wireguard: %s: %w", cfg.Name, err)
	}
	p.index = l.Attrs().Index
	// The genetlink family exists once the module is loaded, which
	// creating the link did.
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("kernel wireguard: opening wgctrl: %w", err)
	}
	if err := p.init(c); err != nil {
		c.Close()
		return nil, err
	}
	if err := nl.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("kernel wireguard: setting %s up: %w", cfg.Name, err)
	}
	if err := installSteering(ns, cfg); err != nil {
		return nil, err
	}
	p.steering = true
	ok = true
	p.log.Info("kernel wireguard up", "device", cfg.Name, "port", cfg.Port, "userspace_port", cfg.SharedPort, "mtu", cfg.MTU)
	return p, nil
}

// init configures the device's key and port through c, with no peers. The
// tests call it with a fake client on a link they made.
func (p *Plane) init(c Client) error {
	if p.cfg.Logger == nil {
		p.cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p.log = p.cfg.Logger
	p.wg = c
	p.peers = map[key.Public]applied{}
	p.routes = map[netip.Prefix]bool{}
	priv := wgtypes.Key(p.cfg.Private)
	port := int(p.cfg.Port)
	if err := c.ConfigureDevice(p.cfg.Name, wgtypes.Config{PrivateKey: &priv, ListenPort: &port, ReplacePeers: true}); err != nil {
		return fmt.Errorf("kernel wireguard: configuring %s (UDP port %d): %w", p.cfg.Name, p.cfg.Port, err)
	}
	p.synced = true
	return nil
}

// Close removes the device (its routes go with it), the port-sharing
// table, and closes the wgctrl client.
func (p *Plane) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return p.teardown()
}

func (p *Plane) teardown() error {
	var errs []error
	if p.wg != nil {
		p.wg.Close()
	}
	if p.ownLink && p.nl != nil && p.index != 0 {
		if l, err := p.nl.LinkByIndex(p.index); err == nil {
			if err := p.nl.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("kernel wireguard: deleting %s: %w", p.cfg.Name, err))
			}
		}
	}
	if p.ownLink && p.ns.IsOpen() {
		if err := removeSteering(p.ns, p.cfg.Port); err != nil {
			errs = append(errs, err)
		}
	}
	if p.nl != nil {
		p.nl.Close()
	}
	if p.ns.IsOpen() {
		p.ns.Close()
	}
	return errors.Join(errs...)
}

// SetPeers makes the device's peers exactly peers (those with an endpoint
// and a key) and routes their prefixes into it, replacing their routes
// into the TUN. It returns the peers the device now carries; the caller
// routes every other peer's prefixes into the TUN and then calls
// PruneRoutes, so that no prefix is ever without a route. A peer the
// device could not be given is not returned, and stays on the TUN.
//
// A peer that joins the device (or whose endpoint changes) is kicked: the
// kernel starts a handshake with it at once. Its side may still hold the
// session it made with wireguard-go (through a relay, before its path
// went direct) and send its data with it, straight to the kernel socket,
// which cannot read it; with nothing to send (the receiving end of a
// stream that stopped arriving) the kernel would never handshake, and the
// pair would wait for the peer's own retry, or longer (a stream stalled a
// minute in the VM). The new session, confirmed by the kernel's first
// keepalive, is the one the peer then sends with.
//
// The steering sets (steer_linux.go) hold the device's peers' endpoints:
// an endpoint leaves them before its peer leaves the device and joins them
// after the peer joined, so that no WireGuard datagram of a peer reaches
// the kernel socket while the device does not know the peer; the kick
// comes after it joined them, so that the answer reaches the kernel (if
// their write failed, at the next SetPeers whose write succeeds).
func (p *Plane) SetPeers(peers []Peer) (map[key.Public]bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("kernel wireguard: closed")
	}
	want := normalize(p.cfg.Private.Public(), peers)
	var errs []error
	eps := endpoints(want)
	if err := p.steer(intersect(p.steered, eps)); err != nil {
		errs = append(errs, err)
	}
	var kick []key.Public
	if cfg, changed := p.peerConfig(want); changed {
		if err := p.wg.ConfigureDevice(p.cfg.Name, cfg); err != nil {
			p.synced = false
			return nil, errors.Join(append(errs, fmt.Errorf("kernel wireguard: configuring peers: %w", err))...)
		}
		p.synced = true
		kick = kicked(cfg)
	}
	p.peers = want
	if err := p.steer(eps); err != nil {
		errs = append(errs, err)
	}
	// The kick only now: the answer to the handshake it starts comes
	// from the peer's endpoint, and reaches the kernel socket only once
	// the endpoint is in the steering sets. Kicked before (as first
	// built), a peer that answered within the few milliseconds the sets
	// took had its response steered to wireguard-go, which dropped it
	// (an index it never sent), and the kernel tried again only after 5 s
	// ("Received invalid response message" at the host's wireguard-go,
	// the VM test's first pings between two hosts joining at once).
	// A peer whose endpoint the sets do not hold (their write failed) is
	// kicked once they do: kicked now, its answer would reach
	// wireguard-go, which drops it, and the peer would have replaced its
	// own handshake state with the kernel's initiation.
	for k := range p.unkicked {
		if _, ok := want[k]; !ok {
			delete(p.unkicked, k)
		} else if !slices.Contains(kick, k) {
			kick = append(kick, k)
		}
	}
	now := kick[:0]
	for _, k := range kick {
		if _, ok := slices.BinarySearchFunc(p.steered, want[k].endpoint, netip.AddrPort.Compare); ok || !p.steering {
			now = append(now, k)
			delete(p.unkicked, k)
		} else {
			if p.unkicked == nil {
				p.unkicked = map[key.Public]bool{}
			}
			p.unkicked[k] = true
		}
	}
	if err := p.kick(now); err != nil {
		errs = append(errs, err)
	}
	carried := make(map[key.Public]bool, len(want))
	routes := map[netip.Prefix]bool{}
	mtus := map[netip.Prefix]int{}
	for k, a := range want {
		carried[k] = true
		for _, pfx := range a.allowed {
			if !pfx.Addr().Is4() || routes[pfx] {
				continue
			}
			routes[pfx] = true
			if a.mtu > 0 && a.mtu < p.cfg.MTU {
				mtus[pfx] = a.mtu
			}
			if p.nl == nil {
				continue
			}
			if err := p.nl.RouteReplace(p.route(pfx, mtus[pfx])); err != nil {
				errs = append(errs, fmt.Errorf("kernel wireguard: routing %s: %w", pfx, err))
			}
		}
	}
	p.routes = routes
	return carried, errors.Join(errs...)
}

// kicked are the peers cfg wrote with an endpoint (new, moved, or all
// after a failure): those to kick.
func kicked(cfg wgtypes.Config) []key.Public {
	var ks []key.Public
	for _, pc := range cfg.Peers {
		if !pc.Remove && pc.Endpoint != nil {
			ks = append(ks, key.Public(pc.PublicKey))
		}
	}
	return ks
}

// kick makes the kernel start a handshake with each of peers at once:
// their keepalive interval goes from zero to kickInterval, and only that
// transition sends, so it goes back to zero in the next call (the
// userspace probes hold NAT mappings open). A failure of the second call
// leaves a 25 s keepalive, harmless, and the device unknown.
func (p *Plane) kick(peers []key.Public) error {
	if len(peers) == 0 {
		return nil
	}
	var on, off wgtypes.Config
	every, zero := kickInterval, time.Duration(0)
	for _, k := range peers {
		on.Peers = append(on.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(k), UpdateOnly: true, PersistentKeepaliveInterval: &every})
		off.Peers = append(off.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(k), UpdateOnly: true, PersistentKeepaliveInterval: &zero})
	}
	if err := p.wg.ConfigureDevice(p.cfg.Name, on); err != nil {
		p.synced = false
		return fmt.Errorf("kernel wireguard: kicking a handshake: %w", err)
	}
	if err := p.wg.ConfigureDevice(p.cfg.Name, off); err != nil {
		p.synced = false
		return fmt.Errorf("kernel wireguard: resetting the keepalives: %w", err)
	}
	return nil
}

// steer makes the steering sets eps (sorted) unless they are already. A
// write is one transaction: when it fails the sets keep what they held,
// steered.
func (p *Plane) steer(eps []netip.AddrPort) error {
	if !p.steering || !p.steerBad && slices.Equal(eps, p.steered) {
		return nil
	}
	write := setKernelEndpoints
	if p.writeSteering != nil {
		write = p.writeSteering
	}
	if err := write(p.ns, p.cfg.Port, eps); err != nil {
		p.steerBad = true
		return err
	}
	p.steered, p.steerBad = eps, false
	return nil
}

// Steered returns the endpoints whose WireGuard datagrams the steering
// sets give the kernel socket, sorted: the device's peers' endpoints when
// the last writes succeeded; after a failed one, what the sets still hold
// (a peer that joined the device then is not in them, one that left may
// still be). These, not the peers SetPeers returned, are the endpoints
// whose answers reach the kernel, so the daemon tells wireguard-go to
// send them no initiation of its own (tunnel.SetKernelEndpoints): told
// the device's peers instead, after a failed write wireguard-go dropped
// its initiations to a peer whose datagrams still reached it and not the
// kernel, and the pair had no session either way until the next write.
func (p *Plane) Steered() []netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.steered)
}

// endpoints are the applied peers' endpoints, sorted, without repeats.
func endpoints(m map[key.Public]applied) []netip.AddrPort {
	eps := make([]netip.AddrPort, 0, len(m))
	for _, a := range m {
		eps = append(eps, a.endpoint)
	}
	slices.SortFunc(eps, netip.AddrPort.Compare)
	return slices.Compact(eps)
}

// intersect is the sorted a without what sorted b lacks.
func intersect(a, b []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(a))
	for _, x := range a {
		if _, ok := slices.BinarySearchFunc(b, x, netip.AddrPort.Compare); ok {
			out = append(out, x)
		}
	}
	return out
}

// normalize turns peers into what is applied, by key: only peers with a
// key other than self's and a valid endpoint; a key listed twice gets the
// union of its prefixes and the last endpoint.
func normalize(self key.Public, peers []Peer) map[key.Public]applied {
	m := make(map[key.Public]applied, len(peers))
	for _, pc := range peers {
		if pc.Key.IsZero() || pc.Key == self || !pc.Endpoint.IsValid() {
			continue
		}
		a := m[pc.Key]
		a.endpoint = netip.AddrPortFrom(pc.Endpoint.Addr().Unmap(), pc.Endpoint.Port())
		if !pc.PSK.IsZero() {
			a.psk = pc.PSK
		}
		if pc.MTU > 0 && (a.mtu == 0 || pc.MTU < a.mtu) {
			a.mtu = pc.MTU
		}
		for _, pfx := range pc.Prefixes {
			if !pfx.IsValid() {
				continue
			}
			a.allowed = append(a.allowed, netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()).Masked())
		}
		m[pc.Key] = a
	}
	for k, a := range m {
		slices.SortFunc(a.allowed, func(x, y netip.Prefix) int {
			if c := x.Addr().Compare(y.Addr()); c != 0 {
				return c
			}
			return x.Bits() - y.Bits()
		})
		a.allowed = slices.Compact(a.allowed)
		m[k] = a
	}
	return m
}

// peerConfig is the wgctrl change from the applied peers to want, and
// whether there is one. A new or changed peer is written whole (its
// AllowedIPs replaced) with the preshared key; its endpoint only when the
// path owner's choice changed, so that one the kernel learned by roaming
// is not reset on every update. A peer written with an endpoint (new, or
// moved) is kicked after the steering sets have it (see SetPeers). After a
// failed write every peer is rewritten and the peer list replaced.
func (p *Plane) peerConfig(want map[key.Public]applied) (wgtypes.Config, bool) {
	cfg := wgtypes.Config{ReplacePeers: !p.synced}
	psk := wgtypes.Key(p.cfg.PSK)
	if p.synced {
		for k := range p.peers {
			if _, ok := want[k]; !ok {
				cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(k), Remove: true})
			}
		}
	}
	for _, k := range sortedKeys(want) {
		w := want[k]
		old, had := p.peers[k]
		if p.synced && had && old.endpoint == w.endpoint && old.psk == w.psk && slices.Equal(old.allowed, w.allowed) {
			continue
		}
		pairPSK := &psk
		if !w.psk.IsZero() {
			pk := wgtypes.Key(w.psk)
			pairPSK = &pk
		}
		pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(k), PresharedKey: pairPSK, ReplaceAllowedIPs: true,
			AllowedIPs: make([]net.IPNet, 0, len(w.allowed))}
		if !p.synced || !had || old.endpoint != w.endpoint {
			pc.Endpoint = net.UDPAddrFromAddrPort(w.endpoint)
		}
		for _, pfx := range w.allowed {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())})
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	return cfg, cfg.ReplacePeers || len(cfg.Peers) > 0
}

func sortedKeys(m map[key.Public]applied) []key.Public {
	ks := make([]key.Public, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b key.Public) int { return slices.Compare(a[:], b[:]) })
	return ks
}

// PruneRoutes removes the device's routes that the last SetPeers did not
// want (those of peers gone to the TUN, which the caller has routed there
// by now).
func (p *Plane) PruneRoutes() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.nl == nil {
		return nil
	}
	if err := ownroutes.Prune(p.nl, p.index, p.routes); err != nil {
		return fmt.Errorf("kernel wireguard: %w", err)
	}
	return nil
}

// route is the route of pfx into the device, with an MTU of its own when
// mtu is not 0 (and the MSS the host's own TCP sockets then advertise).
func (p *Plane) route(pfx netip.Prefix, mtu int) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: p.index,
		Dst:       &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), 32)},
		Scope:     netlink.SCOPE_LINK,
		Protocol:  ownroutes.Protocol,
		Table:     unix.RT_TABLE_MAIN,
	}
	if p.cfg.HostIP.IsValid() {
		r.Src = p.cfg.HostIP.AsSlice()
	}
	if mtu > 0 {
		r.MTU, r.AdvMSS = mtu, mtu-40 // IPv4 + TCP headers, as hostnet's routes into the TUN
	}
	return r
}

// SetHostIP sets the routes' source address (the host's overlay address,
// which a host joining for the first time learns from IPAM after New);
// the next SetPeers routes with it. An invalid address is ignored.
func (p *Plane) SetHostIP(a netip.Addr) {
	if !a.IsValid() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg.HostIP = a.Unmap()
}

// Stats is the kernel's view of each peer it carries; empty when the
// device cannot be read.
func (p *Plane) Stats() map[key.Public]PeerStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[key.Public]PeerStats{}
	if p.closed {
		return out
	}
	dev, err := p.wg.Device(p.cfg.Name)
	if err != nil {
		p.log.Warn("reading the kernel wireguard device", "device", p.cfg.Name, "err", err)
		return out
	}
	for _, pr := range dev.Peers {
		s := PeerStats{LastHandshake: pr.LastHandshakeTime, RxBytes: uint64(max(pr.ReceiveBytes, 0)), TxBytes: uint64(max(pr.TransmitBytes, 0))}
		if pr.Endpoint != nil {
			s.Endpoint = pr.Endpoint.AddrPort()
			s.Endpoint = netip.AddrPortFrom(s.Endpoint.Addr().Unmap(), s.Endpoint.Port())
		}
		out[key.Public(pr.PublicKey)] = s
	}
	return out
}

// Name is the device's name (for the forward rules and status).
func (p *Plane) Name() string { return p.cfg.Name }
