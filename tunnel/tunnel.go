// Package tunnel owns the userspace WireGuard data plane: the TUN device
// driven by wireguard-go, the one UDP socket (a conn.Bind that sorts
// WireGuard from STUN and relay frames), relaying through other peers and
// the per-peer choice between the direct and the relayed path. The host
// networking around it (bridge, veths, routes into the TUN, firewall) is
// package hostnet's.
//
// The wire format of the shared UDP port (how WireGuard, STUN and relay
// frames are told apart, and the relay frame prefix) is described in
// classify.go. Everything here is created in the network namespace of the
// thread that calls New; see Tunnel.
package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weavewg/weavewg/pmtu"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/types/key"
)

// Config is what a Tunnel needs.
type Config struct {
	Private key.Private
	Secret  key.Secret // every peer's WireGuard preshared key
	Port    uint16     // UDP port
	Iface   string     // TUN name, e.g. weavewg0
	MTU     int        // the TUN's MTU
	// FixedMTU says MTU came from the operator (--mtu): no peer's MTU is
	// lowered by its route or by probes (mtu.go).
	FixedMTU bool
	// IdleAfter is how long a pair may carry no data before it goes idle
	// (idle.go); 0: reach.DefaultIdleAfter, negative: never.
	IdleAfter time.Duration
	// OnPeerMTU, if set, is called (from the MTU loop, without locks) when
	// a peer's MTU changes, so that the routes follow (PeerMTUs).
	OnPeerMTU func()
	Logger    *slog.Logger
}

// PeerConfig is one WireGuard peer as the control plane wants it.
type PeerConfig struct {
	Key        key.Public
	Endpoint   netip.AddrPort // its direct UDP address; invalid: leave the endpoint as wireguard-go learned it
	AllowedIPs []netip.Prefix
	// Relay is the peer to send through when the direct path to this one
	// does not answer probes (relay.go, probe.go): normally the first hop of
	// the control plane's route. Zero: no relay, always direct. It must be
	// another peer of the same SetPeers call with an Endpoint.
	Relay key.Public
	// Relayed is the first guess, used until probes have had time to tell:
	// true when the control plane's route is not the direct edge.
	Relayed bool
	// ICE is the peer's address ICE selected; invalid: none.
	ICE netip.AddrPort
	// Reflexive is where STUN saw the peer, as it advertised; invalid: none.
	Reflexive netip.AddrPort
	// DependsOn: we need this peer to hold our NAT mapping open (a control
	// neighbour, or a relay we use): we keep it alive unless we are public.
	DependsOn bool
	// Elsewhere: another device (kernel WireGuard) carries this peer's
	// WireGuard packets. wireguard-go keeps the peer, for the relay frames
	// and probes that stay in userspace, but sends it no keepalives: the
	// handshakes they start would be answered to the other device, and
	// would overwrite the peer's handshake state with it.
	Elsewhere bool
	// PSK is the pair's WireGuard preshared key (the network secret of the
	// newest epoch both hold); zero: Config.Secret. Changing it keeps the
	// session wireguard-go has: the next handshake uses the new key.
	PSK key.Secret
}

// PeerStats is what wireguard-go reports of one peer, with the path the
// tunnel chose for it.
type PeerStats struct {
	Endpoint      netip.AddrPort // the direct address; invalid when relayed
	LastHandshake time.Time      // zero if none
	RxBytes       uint64
	TxBytes       uint64
	Relayed       bool          // sent through relays
	Via           key.Public    // when relayed: the first relay
	RTT           time.Duration // last probe round trip on the path in use; 0 unknown
	From          reach.Source  // where the endpoint came from
	Why           string        // why the path is what it is (reach.Path.Why)
	PeerRelays    bool          // the peer's probes say it sends to us through its relay (reach.Path.PeerRelays)
	MTU           int           // overlay MTU towards the peer (mtu.go)
	MTUSource     pmtu.Source   // why: flag, route, probe or link
	MTUProbed     int           // largest UDP payload the peer answered; 0 none yet
}

// ErrClosed is returned by the methods of a closed Tunnel.
var ErrClosed = errors.New("tunnel closed")

// Tunnel is the data plane of one host.
//
// Network namespaces: New creates everything (the TUN, the UDP sockets) in the network namespace of the thread that calls it,
// and remembers that namespace. Every later netlink call goes through a
// handle opened there, and the Bind reopens its sockets there, so the other
// methods may be called from any goroutine.
type Tunnel struct {
	// Constant after New.
	cfg      Config
	self     key.Public // cfg.Private.Public(): a scalar multiplication, not redone per reconcile
	log      *slog.Logger
	ns       netns.NsHandle  // the namespace New ran in
	nl       *netlink.Handle // netlink in ns
	tunDev   tun.Device
	dev      *device.Device
	bind     *Bind
	tunName  string
	tunIndex int

	// mu guards what follows and serialises every change to WireGuard's
	// peers. It is never taken on the packet path.
	mu      sync.Mutex
	closed  bool
	applied map[key.Public]peerState // peers as last set in wireguard-go
	synced  bool                     // applied is what wireguard-go holds; false after a failed IpcSet
	peers   []PeerConfig             // as last given to SetPeers
	paths   map[key.Public]*pathState
	keys    pairKeys      // probe keys per peer (auth.go)
	stop    chan struct{} // closed by Close: ends the path loop
	done    chan struct{} // closed when the path loop has ended
	// The path owner (paths.go) and what it was last told.
	reach    *reach.Machine
	public   bool
	ice      map[key.Public]netip.AddrPort
	observer PathObserver

	// The paths as last decided, for readers that do not take mu.
	snap atomic.Pointer[map[key.Public]reach.Path]

	// Path MTU (mtu.go): raw and mtuNL are constant after New (raw nil: no
	// probes); peerMTUs is published by the MTU loop.
	raw      *rawSender
	mtuNL    *netlink.Handle // the MTU loop's own, in ns
	peerMTUs atomic.Pointer[map[key.Public]PeerMTU]
	mtuDone  chan struct{} // closed when the MTU loop has ended

	// ICMP (natanswer.go): nil when it cannot be read.
	icmp     net.PacketConn
	icmpDone chan struct{} // closed when the ICMP loop has ended
}

// New creates the TUN device and wireguard-go device, binds the UDP port,
// and brings both up.
//
// It works in the network namespace of the calling thread: a daemon started
// with `ip netns exec` is wholly inside it; a test that serves several
// namespaces from one process locks its thread and enters the namespace
// first (runtime.LockOSThread, netns.Set) and may leave it once New returns.
func New(cfg Config) (*Tunnel, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// Keep one thread, hence one namespace, for all of New.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	t := &Tunnel{cfg: cfg, self: cfg.Private.Public(), log: cfg.Logger, ns: netns.None(), synced: true,
		paths: map[key.Public]*pathState{}, reach: reach.New(cfg.Private.Public()),
		stop: make(chan struct{}), done: make(chan struct{}), mtuDone: make(chan struct{})}
	if cfg.IdleAfter != 0 {
		t.reach.SetIdleAfter(cfg.IdleAfter) // negative: never
	}
	ok := false
	defer func() {
		if !ok {
			t.teardown()
		}
	}()
	var err error
	if t.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("tunnel: reading the network namespace: %w", err)
	}
	if t.nl, err = netlink.NewHandleAt(t.ns, unix.NETLINK_ROUTE); err != nil {
		return nil, fmt.Errorf("tunnel: opening netlink: %w", err)
	}
	if t.tunDev, err = tun.CreateTUN(cfg.Iface, cfg.MTU); err != nil {
		return nil, fmt.Errorf("tunnel: creating TUN %s: %w", cfg.Iface, err)
	}
	if t.tunName, err = t.tunDev.Name(); err != nil {
		return nil, fmt.Errorf("tunnel: TUN %s: %w", cfg.Iface, err)
	}
	link, err := t.nl.LinkByName(t.tunName)
	if err != nil {
		return nil, fmt.Errorf("tunnel: TUN %s: %w", t.tunName, err)
	}
	t.tunIndex = link.Attrs().Index
	t.bind = NewBind(conn.NewStdNetBind(), t.ns)
	t.keys = pairKeys{priv: cfg.Private, secret: cfg.Secret}
	if t.mtuNL, err = netlink.NewHandleAt(t.ns, unix.NETLINK_ROUTE); err != nil {
		return nil, fmt.Errorf("tunnel: opening netlink: %w", err)
	}
	if t.raw, err = openRawSender(cfg.Port); err != nil {
		t.log.Warn("no path MTU probes: peers behind paths that drop ICMP may stall", "err", err)
	}
	tunNL, err := netlink.NewHandleAt(t.ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("tunnel: opening netlink: %w", err)
	}
	t.dev = device.NewDevice(newNSTUN(t.tunDev, tunNL, t.tunIndex), t.bind, newWGLogger(t.log))
	if err := t.dev.IpcSet(deviceUAPI(cfg.Private, cfg.Port)); err != nil {
		return nil, fmt.Errorf("tunnel: configuring WireGuard: %w", err)
	}
	if err := t.dev.Up(); err != nil {
		return nil, fmt.Errorf("tunnel: bringing WireGuard up on UDP port %d: %w", cfg.Port, err)
	}
	if err := t.nl.LinkSetMTU(link, cfg.MTU); err != nil {
		return nil, fmt.Errorf("tunnel: TUN %s: setting MTU %d: %w", t.tunName, cfg.MTU, err)
	}
	if err := t.nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("tunnel: TUN %s: setting up: %w", t.tunName, err)
	}
	t.icmpDone = make(chan struct{})
	if t.icmp = t.openICMP(); t.icmp != nil {
		go func() { defer close(t.icmpDone); t.icmpLoop(t.icmp) }()
	} else {
		close(t.icmpDone)
	}
	ok = true
	go t.pathLoop()
	go t.mtuLoop()
	t.log.Info("data plane up", "tun", t.tunName, "port", cfg.Port, "mtu", cfg.MTU)
	return t, nil
}

func (c *Config) check() error {
	switch {
	case c.Private.IsZero():
		return errors.New("tunnel: no private key")
	case c.Iface == "" || len(c.Iface) > maxIfNameLen:
		return fmt.Errorf("tunnel: TUN name %q must have 1 to %d characters", c.Iface, maxIfNameLen)
	case c.MTU < 576 || c.MTU > 65535:
		return fmt.Errorf("tunnel: MTU %d is out of range", c.MTU)
	case c.Port == 0:
		return errors.New("tunnel: no UDP port")
	}
	return nil
}

// Close tears down the device and the TUN (and with it every route into it).
func (t *Tunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	close(t.stop)
	t.mu.Unlock()
	<-t.done    // the path loop takes mu
	<-t.mtuDone // the MTU loop reads the path table
	if t.icmp != nil {
		t.icmp.Close()
		<-t.icmpDone
	}
	t.mu.Lock()
	return t.teardown()
}

// teardown releases whatever New made; it copes with a half-made Tunnel.
func (t *Tunnel) teardown() error {
	var errs []error
	switch {
	case t.dev != nil:
		t.dev.Close() // closes the Bind and the TUN; the TUN link goes with it
	case t.tunDev != nil:
		t.tunDev.Close()
	}
	t.raw.close()
	if t.mtuNL != nil {
		t.mtuNL.Close()
	}
	if t.nl != nil {
		t.nl.Close()
	}
	if t.ns.IsOpen() {
		t.ns.Close()
	}
	return errors.Join(errs...)
}

// SetPeers makes the WireGuard peers exactly peers.
//
// Only what changed since the last call is sent to wireguard-go, and nothing
// when nothing changed. A peer's endpoint is set only when the one given
// changes, so an endpoint wireguard-go learned by roaming is kept. Routes
// into the TUN are not set here: they are host networking
// (hostnet.Host.SetRoutes).
func (t *Tunnel) SetPeers(peers []PeerConfig) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("set peers: %w", ErrClosed)
	}
	t.peers = slices.Clone(peers)
	t.feedPeersLocked(t.peers)
	t.updateRelayTableLocked()
	return t.applyLocked()
}

// applyLocked makes wireguard-go follow t.peers and the path chosen for each.
func (t *Tunnel) applyLocked() error {
	want := normalizePeers(t.peers)
	t.setPathsLocked(want)
	var errs []error
	applied := t.applied
	if !t.synced {
		// A failed IpcSet may have applied part of its text: start from
		// what wireguard-go holds, every peer of it marked stale so it is
		// written out whole or removed.
		if cur, err := t.currentPeersLocked(); err != nil {
			errs = append(errs, err)
		} else {
			applied = cur
		}
	}
	if text := buildPeersUAPI(t.self, applied, want, t.cfg.Secret); text != "" {
		if err := t.dev.IpcSet(text); err != nil {
			t.synced = false
			errs = append(errs, fmt.Errorf("set peers: configuring WireGuard: %w", err))
		} else {
			t.applied, t.synced = want, true
		}
	} else if len(errs) == 0 {
		t.applied, t.synced = want, true
	}
	return errors.Join(errs...)
}

// currentPeersLocked reads wireguard-go's peers, each marked stale.
func (t *Tunnel) currentPeersLocked() (map[key.Public]peerState, error) {
	text, err := t.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("set peers: reading WireGuard peers: %w", err)
	}
	stats, err := parsePeerStats(text)
	if err != nil {
		return nil, fmt.Errorf("set peers: %w", err)
	}
	cur := make(map[key.Public]peerState, len(stats))
	for k := range stats {
		cur[k] = peerState{stale: true}
	}
	return cur, nil
}

// PeerStats reports every WireGuard peer. It returns an empty map (and logs)
// if wireguard-go cannot be read, which only happens once it is closed.
func (t *Tunnel) PeerStats() map[key.Public]PeerStats {
	text, err := t.dev.IpcGet()
	if err != nil {
		t.log.Error("reading WireGuard peer stats", "err", err)
		return map[key.Public]PeerStats{}
	}
	stats, err := parsePeerStats(text)
	if err != nil {
		t.log.Error("parsing WireGuard peer stats", "err", err)
		return map[key.Public]PeerStats{}
	}
	t.addPathStats(stats)
	t.addMTUStats(stats)
	return stats
}

// Rehandshake makes wireguard-go start a handshake with each of these
// peers now, even while it holds a session with them, and confirm it with
// a keepalive. The daemon calls it for peers that come back from another
// device (kernel WireGuard): the peer's current session is the one it made
// with that device, which wireguard-go cannot read, and a host with
// nothing to send (the receiving end of a stream) would otherwise wait
// for the peer to give up on its session (15 s without an answer) before
// anything it sends arrives. Unknown keys are ignored.
func (t *Tunnel) Rehandshake(keys map[key.Public]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	for k := range keys {
		p := t.dev.LookupPeer(device.NoisePublicKey(k))
		if p == nil {
			continue
		}
		// The session no longer sends (and the 5 s guard on new
		// initiations is lifted), so the keepalive waits for a handshake.
		p.ExpireCurrentKeypairs()
		p.SendKeepalive()
		t.log.Info("handshaking again with a peer back from another device", "peer", k.Name())
	}
}

// TUNName is the name of the TUN device, as the kernel gave it.
func (t *Tunnel) TUNName() string { return t.tunName }

// Counters reports datagram sorting and drop counters by name: the Counter*
// constants (udp_wireguard, udp_stun, udp_relay, udp_junk_dropped, …).
func (t *Tunnel) Counters() map[string]uint64 { return t.bind.Counters() }

// SetSTUNHandler sets the function given every STUN datagram that arrives on
// the shared port (nil: STUN is counted and dropped). See PacketHandler.
func (t *Tunnel) SetSTUNHandler(h PacketHandler) { t.bind.SetSTUNHandler(h) }

// SetRelayHandler sets the function given every relay frame that arrives on
// the shared port (nil: relay frames are counted and dropped).
func (t *Tunnel) SetRelayHandler(h PacketHandler) { t.bind.SetRelayHandler(h) }

// SendUDP sends one datagram from the shared UDP port, e.g. a STUN answer.
func (t *Tunnel) SendUDP(pkt []byte, dst netip.AddrPort) error { return t.bind.SendTo(pkt, dst) }

// maxIfNameLen is IFNAMSIZ minus the terminating NUL.
const maxIfNameLen = 15

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}
