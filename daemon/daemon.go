// Package daemon wires one host's weavewg together: identity and state dir,
// the control plane (discovery), the WireGuard data plane (tunnel), the host
// networking around it (hostnet), the local API on a unix socket, and
// metrics. It owns lifecycle: start, reconcile, stop.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/dns"
	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/ipam"
	"github.com/weavewg/weavewg/mcast"
	"github.com/weavewg/weavewg/nat"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/attachment"
	"github.com/weavewg/weavewg/types/key"
)

// reconcileInterval bounds how stale the data plane can be if a change
// notification is missed; normally Changes() drives reconciliation at once.
const reconcileInterval = 5 * time.Second

// controlPlane is what the daemon uses of discovery.Router; an interface so
// the daemon's own logic is tested with a fake.
type controlPlane interface {
	Start() error
	Close() error
	Connect(addr string) error
	Forget(addr string) error
	SetAttached(prefixes []netip.Prefix)
	// SetHostIP changes the host address this peer advertises.
	SetHostIP(ip netip.Addr)
	Changes() <-chan struct{}
	Peers() []discovery.Peer
	Connections() []discovery.ConnState
	Counters() map[string]uint64
}

// gossipChannel is a named channel of the control plane (discovery.Channel).
type gossipChannel interface {
	Send(to key.Public, msg []byte) error
	Broadcast(msg []byte)
}

// channelOpener registers a named gossip channel; it must be called before
// the control plane starts.
type channelOpener func(name string, handler func(from key.Public, msg []byte)) (gossipChannel, error)

// tokenRegistry is the join-token part of discovery.Router.
type tokenRegistry interface {
	CreateToken(ttl time.Duration, uses uint16, endpoints []discovery.Bootstrap) (discovery.Token, error)
	Tokens() []discovery.TokenRecord
	RevokeToken(id discovery.TokenID) error
}

// The data plane, in the parts it is split at (docs/architecture.md draws
// them):
//
//   - peerDatapath carries WireGuard peers' packets. tunnel.Tunnel
//     (wireguard-go over a TUN) carries every peer but those another
//     device takes: kernel WireGuard (kernelPath, kernel.go) takes the
//     direct ones, the VXLAN fast path (fastPath) the trusted ones. Those
//     do not own the shared UDP socket.
//   - sharedSocket is the userspace UDP port every peer knows. STUN (NAT
//     traversal) and relay frames arrive on it and NAT traversal sends from
//     it, whichever datapath carries a peer's packets; it is a dependency
//     of its own, so no datapath can switch NAT traversal off by lacking it.
//   - wireGuardPlane is tunnel.Tunnel: a peer datapath that owns the socket.
//   - hostNetwork is hostnet.Host: the bridge, veths into namespaces, the
//     routes into the TUN and the firewall rules.

// peerDatapath carries the packets of the WireGuard peers it is given.
type peerDatapath interface {
	Close() error
	// SetPeers makes the datapath's peers exactly peers.
	SetPeers(peers []tunnel.PeerConfig) error
	// SetPublic says whether this host is known to have a public address
	// (the path owner decides keepalives by it).
	SetPublic(public bool)
	// SetPathObserver sets the function told every peer's path when one
	// changes (NAT traversal's input); it must not block.
	SetPathObserver(o tunnel.PathObserver)
	PeerStats() map[key.Public]tunnel.PeerStats
	// PeerMTUs is each peer's overlay MTU where known (path MTU: routes
	// to a peer behind a smaller path get it).
	PeerMTUs() map[key.Public]tunnel.PeerMTU
	// MarkActive says that these peers carried data through another
	// device (kernel WireGuard): their paths are not idle.
	MarkActive(keys map[key.Public]bool)
	// Rehandshake starts a new handshake with these peers now, although
	// a session with them is fresh: they come back from another device
	// (kernel WireGuard), whose session is the one they send with.
	Rehandshake(keys map[key.Public]bool)
	// SetKernelEndpoints says where the kernel device's peers are (the
	// steering sets): wireguard-go's initiations to those would be
	// answered to the kernel socket, and are not sent.
	SetKernelEndpoints(eps []netip.AddrPort)
}

// sharedSocket is the userspace UDP port: STUN and relay frames on it,
// datagrams sent from it, its counters.
type sharedSocket interface {
	SetSTUNHandler(h tunnel.PacketHandler)
	SendUDP(pkt []byte, dst netip.AddrPort) error
	Counters() map[string]uint64
}

// wireGuardPlane is the userspace WireGuard data plane.
type wireGuardPlane interface {
	peerDatapath
	sharedSocket
}

// hostNetwork is what the daemon uses of hostnet.Host.
type hostNetwork interface {
	Close() error // removes everything (reset)
	// CloseKeepingBridge leaves the bridge, its ports and the forward
	// rules in place (a stop or upgrade).
	CloseKeepingBridge() error
	// SetRoutesWithMTU routes the prefixes inside the overlay into the
	// TUN, those in mtu with a route MTU of their own.
	SetRoutesWithMTU(prefixes []netip.Prefix, mtu map[netip.Prefix]int) error
	Attach(spec hostnet.AttachSpec) (hostnet.Attached, error)
	Adopt(a hostnet.Attached) error
	Detach(a hostnet.Attached) error
	// CreateVeth, AdoptVeth and DeleteVeth serve container runtimes that
	// move the veth into the container themselves (Docker).
	CreateVeth(hostName, peerName string) (net.HardwareAddr, error)
	AdoptVeth(hostName string) error
	DeleteVeth(hostName string) error
}

// dataPlane is the host's data plane in its parts.
type dataPlane struct {
	wg wireGuardPlane
	// socket is NAT traversal's and relaying's: wg's own socket. Only
	// tests assemble a daemon without one (nil), and so without NAT
	// traversal.
	socket sharedSocket
	host   hostNetwork
	// fast is the trusted VXLAN path (fastpath.go); nil without
	// --trusted-subnets.
	fast fastPath
	// kernel is the kernel WireGuard device (kernel.go); nil on the
	// userspace datapath.
	kernel kernelPath
}

// close closes the fast path, the host networking, then the WireGuard
// datapath. keepBridge (a stop, not a reset) leaves the bridge and its
// forward rules for the containers' local traffic.
func (p dataPlane) close(keepBridge bool) error {
	var errs []error
	if p.fast != nil {
		errs = append(errs, p.fast.Close())
	}
	if p.kernel != nil {
		errs = append(errs, p.kernel.Close())
	}
	host := p.host.Close
	if keepBridge {
		host = p.host.CloseKeepingBridge
	}
	return errors.Join(append(errs, host(), p.wg.Close())...)
}

var (
	_ controlPlane   = (*discovery.Router)(nil)
	_ wireGuardPlane = (*tunnel.Tunnel)(nil)
	_ hostNetwork    = (*hostnet.Host)(nil)
)

// Daemon is one running weavewg router.
type Daemon struct {
	// Constant after New.
	cfg     Config
	log     *slog.Logger
	priv    key.Private
	pub     key.Public
	secret  key.Secret
	network *networkState
	mtuFrom string // where the tunnel MTU came from (mtu.go); set before the data plane opens
	// datapathWhy says why the userspace datapath is used (kernel.go);
	// set when the data plane opens.
	datapathWhy string
	// createdNetwork: this start created the network, so it prints how
	// others join.
	createdNetwork bool
	// seedsRing: this start created the network (no network.json before,
	// nobody to join), so it, and only it, seeds the address ring. A
	// founder that lost its ipam.db gets the ring back from its peers
	// instead of seeding a second one.
	seedsRing bool
	// newNetwork: this host was in no network before this start (it
	// created or joined one now).
	newNetwork bool

	tokens  tokenRegistry
	members memberRegistry
	secrets secretKeeper
	nicks   nicknames // nicknames of peers seen, for evicted ones
	router  controlPlane
	tun     wireGuardPlane
	host    hostNetwork
	planes  dataPlane
	dns     *dns.Server // nil with --no-dns
	mcast   *multicast  // nil when the host network cannot tap its bridge (tests)
	ipam    *ipam.Allocator
	ipamCh  gossipChannel // the ipam channel: anti-entropy goes to one peer (ipamAntiEntropy)
	nat     *nat.Manager  // nil when the data plane has no socket of its own (tests)

	recent recentLog // the last warnings and errors, for the report

	// closers shuts down what has started, in reverse order; start, a failed
	// assemble and run's stop all use it.
	closers closers

	// Guarded by mu, which serialises attach/detach and the state file.
	mu          sync.Mutex
	attachments []attachment.Record  // the attachment service's records (attach.go)
	missing     map[string]time.Time // attachments whose namespace is gone, by id, since when

	// The host's own overlay address (expose.go): invalid until IPAM
	// gives one; set by prepare or the reconcile loop, read anywhere.
	hostIPv atomic.Pointer[netip.Prefix]
	// exposeMu guards exposed (the subnets the host is exposed to) and
	// host.json.
	exposeMu sync.Mutex
	exposed  []netip.Prefix
	// filterMu guards filterErr, the last error of applyFilters (logged
	// once).
	filterMu  sync.Mutex
	filterErr string

	// Owned by the reconcile loop.
	hostClaimed    bool                  // the host address is recorded in IPAM
	hostClaimErr   string                // the last reason it could not be, logged once
	hostIPConflict map[key.Public]string // peers whose host address is refused, and why
	// refusedHostIPs is hostIPConflict published for status (read without
	// the reconcile loop); never modified after Store.
	refusedHostIPs atomic.Pointer[map[key.Public]string]
	goneSince      map[key.Public]time.Time // range owners unreachable, since when
	reachableSet   map[key.Public]bool      // as last told to the allocator
	dnsToldReach   bool                     // the DNS table was given the whole reachable set once
	evictSeen      map[key.Public]time.Time // evicted peers, since when known here (membership.go)
	onKernel       map[key.Public]bool      // peers the kernel device carries (kernel.go)
	kernelBytes    map[key.Public]uint64    // their bytes both ways at the last reconcile
	// kernelPeers is onKernel published for status; never modified after
	// Store.
	kernelPeers atomic.Pointer[map[key.Public]bool]
	ticks       int

	kick chan struct{} // capacity 1: ask the reconcile loop to run now

	// pluginGuard is the pipe to the Docker plugin guard; held so that it
	// stays open (and is not closed by a finalizer) while the daemon runs.
	pluginGuard *os.File

	stop         context.CancelFunc // stops run; set by Run
	forgetOnStop atomic.Bool        // reset: remove the network's state after stopping
	toldSpace    bool               // owned by the reconcile loop: "got address space" said
}

// Run starts the daemon and blocks until ctx is cancelled or a fatal error
// occurs. On return everything it created in the host is removed, except the
// attached namespaces' veths, which the next start re-adopts.
func Run(ctx context.Context, cfg Config) error {
	d, err := start(cfg)
	if err != nil {
		return err
	}
	ctx, d.stop = context.WithCancel(ctx)
	defer d.stop()
	return d.run(ctx)
}

func start(cfg Config) (*Daemon, error) {
	d, err := prepare(cfg)
	if err != nil {
		return nil, err
	}
	planes, err := d.openDataPlane()
	if err != nil {
		return nil, err
	}
	toks, tokensLost, err := loadTokens(cfg.StateDir, d.newNetwork)
	if err != nil {
		d.log.Warn("starting without the token registry: joiners with tokens this host does not know are refused until a peer sends it", "err", err)
	}
	evictions, err := loadEvictions(cfg.StateDir)
	if err != nil {
		d.log.Warn("starting without the saved eviction records; they come back from the peers", "err", err)
	}
	secrets, err := loadSecrets(cfg.StateDir, cfg.Admission)
	if err != nil {
		d.log.Warn("starting without the saved secret epochs", "err", err)
	}
	router, err := discovery.New(discovery.Config{
		Private:  d.priv,
		Secret:   d.secret,
		Nickname: cfg.Nickname,
		Port:     cfg.Port,
		HostIP:   d.hostPrefix().Addr(),
		// The network's (resolveNetwork), told to joiners.
		Range:         d.cfg.Range,
		DefaultSubnet: d.cfg.DefaultSubnet,
		Tokens:        toks,
		TokensLost:    tokensLost,
		SaveTokens: func(recs []discovery.TokenRecord) error {
			return saveTokensFile(cfg.StateDir, recs)
		},
		Secrets: secrets,
		SaveSecrets: func(st discovery.SecretState) error {
			return saveSecretsFile(cfg.StateDir, st)
		},
		ConnLimit: cfg.ConnLimit,
		Evictions: evictions,
		SaveEvictions: func(recs []discovery.EvictRecord) error {
			return saveEvictionsFile(cfg.StateDir, recs)
		},
		Logger: d.log.With("part", "discovery"),
	})
	if err != nil {
		planes.close(false)
		return nil, fmt.Errorf("control plane: %w", err)
	}
	open := func(name string, h func(key.Public, []byte)) (gossipChannel, error) {
		return router.Channel(name, h)
	}
	d.tokens = router
	d.members = router
	d.secrets = router
	if err := d.assemble(router, planes, open); err != nil {
		return nil, err
	}
	return d, nil
}

// openDataPlane makes the WireGuard data plane and the host networking
// around its TUN, in this process's network namespace.
func (d *Daemon) openDataPlane() (dataPlane, error) {
	mtu, fixed, why, err := tunnelMTU(d.cfg)
	if err != nil {
		return dataPlane{}, fmt.Errorf("data plane: %w", err)
	}
	d.cfg.MTU, d.mtuFrom = mtu, why
	d.log.Info("tunnel MTU", "mtu", mtu, "from", why)
	kernel, err := d.openKernel()
	if err != nil {
		return dataPlane{}, fmt.Errorf("data plane: %w", err)
	}
	closeKernel := func() {
		if kernel != nil {
			kernel.Close()
		}
	}
	tun, err := tunnel.New(tunnel.Config{
		Private:   d.priv,
		Secret:    d.secret,
		Port:      d.tunnelPort(kernel),
		Iface:     d.cfg.Iface,
		MTU:       mtu,
		FixedMTU:  fixed,
		IdleAfter: d.cfg.IdleAfter,
		OnPeerMTU: d.nudge,
		Logger:    d.log.With("part", "tunnel"),
	})
	if err != nil {
		closeKernel()
		return dataPlane{}, fmt.Errorf("data plane: %w", err)
	}
	others := d.fastDevices()
	if kernel != nil {
		others = append(others, kernel.Name())
	}
	fs := d.filterState()
	host, err := hostnet.New(hostnet.Config{
		Bridge:  d.cfg.Bridge,
		TUN:     tun.TUNName(),
		MTU:     d.cfg.MTU,
		HostIP:  d.hostPrefix(),
		Overlay: d.cfg.Range,
		// Other hosts replicate multicast to this port of the host
		// address (mcast.go), through the peer devices only.
		PeerUDPPorts: []uint16{uint16(mcast.DataPort(int(d.cfg.Port)))},
		MACSeed:      d.pub[:],
		// The VXLAN fast path's device, made after this, and the kernel
		// WireGuard device forward like the TUN.
		OtherDevices: others,
		// A relaunch builds the filter whole (applyFilters sets it later).
		Subnets:     fs.subnets,
		PortSubnets: fs.ports,
		Egress:      fs.egress,
		Logger:      d.log.With("part", "hostnet"),
	})
	if err != nil {
		tun.Close()
		closeKernel()
		return dataPlane{}, fmt.Errorf("host networking: %w", err)
	}
	fast, err := d.openFastPath()
	if err != nil {
		host.Close()
		tun.Close()
		closeKernel()
		return dataPlane{}, err
	}
	return dataPlane{wg: tun, socket: tun, host: host, fast: fast, kernel: kernel}, nil
}

// prepare validates cfg and loads what the state dir keeps.
func prepare(cfg Config) (*Daemon, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg: cfg, kick: make(chan struct{}, 1),
		missing:        map[string]time.Time{},
		hostIPConflict: map[key.Public]string{}, goneSince: map[key.Public]time.Time{},
	}
	d.refusedHostIPs.Store(&map[key.Public]string{})
	// Every part logs through d.log; warnings and errors are also kept for
	// the report.
	d.log = slog.New(newRecentHandler(cfg.Logger.Handler(), &d.recent))
	var created bool
	var err error
	d.priv, created, err = loadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d.pub = d.priv.Public()
	if created {
		d.log.Info("created a new identity", "name", d.pub.Name(), "state_dir", cfg.StateDir)
	}
	if d.createdNetwork, err = d.resolveNetwork(); err != nil {
		return nil, err
	}
	// The network's range may differ from the flag's default. Whether it
	// is private space was checked by the start that created the network.
	if !d.seedsRing {
		d.cfg.ForceRange = true
	}
	if err := d.cfg.validate(); err != nil {
		return nil, err
	}
	if err := checkRangeFree(d.cfg.Range, d.cfg.Iface, d.cfg.Bridge); err != nil {
		return nil, err
	}
	cfg = d.cfg
	d.loadHost()
	if d.attachments, err = loadAttachments(cfg.StateDir, cfg.Range.Bits(), d.log); err != nil {
		return nil, err
	}
	return d, nil
}

// assemble starts the control plane over an existing data plane, re-adopts
// attachments and dials the configured peers. On error it closes both parts.
func (d *Daemon) assemble(router controlPlane, planes dataPlane, open channelOpener) (err error) {
	d.router, d.tun, d.host, d.planes = router, planes.wg, planes.host, planes
	// A stop keeps the bridge (local traffic flows on); reset, which sets
	// forgetOnStop before it stops the daemon, removes everything.
	d.closers.add("data plane", func() error { return planes.close(!d.forgetOnStop.Load()) })
	defer func() {
		if err != nil {
			d.closers.close()
		}
	}()
	if err := d.openIPAM(open); err != nil {
		return err
	}
	d.closers.add("ipam", d.ipam.Close)
	if err := d.startDNS(open); err != nil {
		return err
	}
	if d.dns != nil {
		d.closers.add("dns", d.dns.Close)
	}
	if err := d.startMulticast(open); err != nil {
		return err
	}
	if d.mcast != nil {
		d.closers.add("multicast", d.mcast.close)
	}
	if err := d.openNAT(planes.socket, open); err != nil {
		return fmt.Errorf("nat traversal: %w", err)
	}
	d.closers.add("nat traversal", d.closeNAT)
	if err := router.Start(); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	d.closers.add("control plane", router.Close)
	d.adoptAttachments()
	// The host address: recorded in IPAM, or allocated now when this
	// peer has space (a founder); else at a reconcile once it has.
	d.ensureHostIP()
	d.exposeMu.Lock()
	d.applyExposedLocked()
	d.exposeMu.Unlock()
	for _, p := range d.cfg.Peers {
		if err := router.Connect(p); err != nil {
			return fmt.Errorf("peer %q: %w", p, err)
		}
	}
	return nil
}

func (d *Daemon) run(ctx context.Context) error {
	srv, err := d.serveAPI()
	if err != nil {
		d.closers.close()
		return err
	}
	d.closers.add("api", func() error {
		shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(shutCtx)
	})
	d.serveUAPI()
	stopMetrics, err := d.serveMetrics(d.metricsRegistry())
	if err != nil {
		d.closers.close()
		return err
	}
	d.closers.add("metrics", stopMetrics)
	d.announce()
	d.notify("ready: peer %s(%s), overlay address %s, API %s", d.pub.Name(), d.cfg.Nickname, d.hostIPText(), d.cfg.APISocket)
	// Type=notify units are ready once the API answers.
	d.notifyManager("READY=1\nSTATUS=running; API on " + d.cfg.APISocket)
	d.log.Info("weavewg is running",
		"name", d.pub.Name(), "nickname", d.cfg.Nickname, "port", d.cfg.Port,
		"host_ip", d.hostIPText(), "iface", d.cfg.Iface, "bridge", d.cfg.Bridge,
		"api_socket", d.cfg.APISocket)

	stopDocker := d.startDocker()
	d.closers.add("docker plugin", func() error { stopDocker(); return nil })
	var wg sync.WaitGroup
	loopCtx, stopLoop := context.WithCancel(ctx)
	wg.Go(func() { d.reconcileLoop(loopCtx) })
	if w, ok := d.host.(linkWatcher); ok {
		wg.Go(func() { w.WatchDeletedLinks(loopCtx.Done(), d.hostVethDeleted) })
	}

	<-ctx.Done()
	d.log.Info("stopping")
	d.notifyManager("STOPPING=1")
	stopLoop()
	wg.Wait()
	err = d.closers.close()
	if d.forgetOnStop.Load() {
		d.forget()
	}
	if err != nil {
		d.log.Error("unclean stop", "err", err)
		return err
	}
	d.log.Info("stopped")
	return nil
}

// reconcileLoop makes the data plane follow the control plane.
func (d *Daemon) reconcileLoop(ctx context.Context) {
	// On the process's beat (internal/beat): with the other loops'
	// ticks, an idle daemon wakes once a second, not once per loop.
	t := beat.NewTicker(reconcileInterval)
	defer t.Stop()
	tick := beat.NewTicker(tickInterval)
	defer tick.Stop()
	// ringChanged is taken before each reconcile, so a ring change during
	// it (or during a tick) closes the channel this loop is waiting on.
	ringChanged := d.ipam.Updated()
	d.reconcile()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			// The allocator's periodic work; whatever it changes in the
			// ring arrives through ringChanged.
			d.ipamTick(now)
			continue
		case <-d.router.Changes():
		case <-ringChanged:
		case <-d.kick:
		case <-t.C:
		}
		ringChanged = d.ipam.Updated()
		d.reconcile()
	}
}

// reconcile sets WireGuard peers and routes from what gossip knows: every
// reachable peer, allowed exactly its host address and the address ranges
// it owns in IPAM. It also tells the allocator and DNS who is reachable and
// which host addresses must never be handed out.
func (d *Daemon) reconcile() {
	var want []tunnel.PeerConfig
	var reachable, direct []key.Public
	reachSet := map[key.Public]bool{}
	d.ensureHostIP()
	d.applyFilters()
	self := d.hostPrefix().Addr()
	// Other hosts' addresses are reserved here; our own is an allocation.
	var hostIPs []netip.Addr
	conflicts := map[key.Public]string{}
	ranges := d.ipam.AllPrefixes()
	local := map[netip.Addr]string{}
	for _, a := range d.ipam.Allocations() {
		local[a.Addr] = a.ID
	}
	peers := d.router.Peers()
	d.nicks.note(peers)
	inputs := pathInputs(peers)
	d.tun.SetPublic(d.knownPublic())
	if m, ok := d.tun.(interface{ SetMappedAddrs([]netip.Addr) }); ok {
		m.SetMappedAddrs(d.natMappedAddrs()) // tunnel/natanswer.go
	}
	d.natPeers(peers)
	// A host address is believed only if nobody else uses it: its own
	// record is signed, but any member may declare any --host-ip, and a
	// /32 in its AllowedIPs would take that address's traffic (issue 14).
	containerOf := map[netip.Addr]key.Public{}
	hostIPUsers := map[netip.Addr]int{}
	for _, p := range peers {
		for _, a := range p.Attached {
			containerOf[a.Addr()] = p.Key
		}
		if !p.Self && p.HostIP.IsValid() {
			hostIPUsers[p.HostIP]++
		}
	}
	for _, p := range peers {
		if !p.Self && p.HostIP.IsValid() {
			hostIPs = append(hostIPs, p.HostIP)
		}
		if p.Self || !p.Reachable {
			continue
		}
		reachable = append(reachable, p.Key)
		reachSet[p.Key] = true
		if p.Direct {
			direct = append(direct, p.Key)
		}
		in := inputs[p.Key]
		pc := tunnel.PeerConfig{Key: p.Key, Endpoint: p.Endpoint, ICE: d.natICE(p.Key), Reflexive: d.natReflexive(p.Key), Relay: in.via, Relayed: in.relayed, DependsOn: in.dependsOn}
		if d.secrets != nil {
			pc.PSK = d.secrets.PairSecret(p.Key)
		}
		if p.HostIP.IsValid() {
			// Refused host addresses get no route and no AllowedIPs; the
			// reason shows in status and is logged once.
			why := ""
			if p.HostIP == self {
				why = "it is this host's overlay address"
			} else if id, taken := local[p.HostIP]; taken {
				why = "it is the address of container " + id + " here"
			} else if owner, taken := containerOf[p.HostIP]; taken && owner != p.Key {
				why = "it is the address of a container on " + owner.Name()
			} else if hostIPUsers[p.HostIP] > 1 {
				why = "another peer declares the same host address"
			}
			if why != "" {
				conflicts[p.Key] = why
				if d.hostIPConflict[p.Key] != why {
					d.log.Error("refusing a peer's host address; give it another --host-ip",
						"peer", p.Key.Name(), "nickname", p.Nickname, "host_ip", p.HostIP.String(), "reason", why)
				}
			} else {
				pc.AllowedIPs = append(pc.AllowedIPs, netip.PrefixFrom(p.HostIP, 32))
			}
		}
		// A range may hold this host's own address (host addresses are
		// reserved, not carved out); the kernel's local route still wins
		// for it, and WireGuard never sees packets to it.
		pc.AllowedIPs = append(pc.AllowedIPs, ranges[p.Key]...)
		want = append(want, pc)
	}
	d.ipam.SetReserved(hostIPs)
	// Control neighbours are the preferred donors when this host asks
	// for space: their answer takes the direct connection (ipam/space.go).
	d.ipam.SetNeighbours(direct)
	if d.dns != nil {
		d.dns.SetNeighbours(direct) // its quick rounds' digests go to them
	}
	var reachUp, reachDown []key.Public // since the last reconcile
	if !maps.Equal(reachSet, d.reachableSet) {
		// A peer that just arrived may lack the ring, or hold one that
		// lacks ours: exchange at once rather than at the next round. Its
		// control neighbours and it exchange digests with relay set
		// (ipam.Allocator.NewNeighbour: only what differs crosses, and
		// each floods only what is news to its side of the mesh, a healed
		// partition); the other peers need not, or one join would cost a
		// broadcast per peer, O(N²) messages (issue 18; sim's node loop
		// does the same).
		// Other arrivals get our own entries (ipam.SendOwn: the
		// broadcasts of our changes made before it was reachable missed
		// it), unless many arrive at once (we joined, or a partition
		// healed: the neighbours' relayed rings cover that).
		var arrived, others []key.Public
		for _, p := range peers {
			if reachSet[p.Key] && !d.reachableSet[p.Key] {
				if p.Direct {
					arrived = append(arrived, p.Key)
				} else {
					others = append(others, p.Key)
				}
			}
		}
		reachUp = append(slices.Clone(arrived), others...)
		for k := range d.reachableSet {
			if !reachSet[k] {
				reachDown = append(reachDown, k)
			}
		}
		d.reachableSet = reachSet
		d.ipam.SetPeers(reachable)
		for _, k := range arrived {
			d.ipam.NewNeighbour(k)
		}
		if len(others) <= ipam.MaxSendOwnArrivals {
			for _, k := range others {
				d.ipam.SendOwn(k)
			}
		}
	}
	d.trackLiveness(ranges, reachSet, time.Now())
	if !d.toldSpace && len(ranges[d.pub]) > 0 {
		d.toldSpace = true
		d.notify("got address space: %v", ranges[d.pub])
	}
	d.hostIPConflict = conflicts
	d.refusedHostIPs.Store(&conflicts)
	d.markElsewhere(want)
	if err := d.tun.SetPeers(want); err != nil {
		d.log.Error("configuring WireGuard peers", "err", err)
	}
	// Peers on the trusted fast path get their routes there first, then
	// direct peers on the kernel device theirs (kernel.go); the rest go
	// into the TUN; then the fast path and the kernel device drop what
	// they no longer carry (fastpath.go).
	onVXLAN := d.setFastPeers(want, peers, conflicts)
	onKernel := d.setKernelPeers(want, onVXLAN)
	var routes []netip.Prefix
	routeMTU := map[netip.Prefix]int{}
	mtus := d.tun.PeerMTUs()
	for _, pc := range want {
		if onVXLAN[pc.Key] || onKernel[pc.Key] {
			continue
		}
		routes = append(routes, pc.AllowedIPs...)
		if m := mtus[pc.Key].MTU; m > 0 && m < d.cfg.MTU {
			for _, pfx := range pc.AllowedIPs {
				routeMTU[pfx] = m
			}
		}
	}
	if err := d.host.SetRoutesWithMTU(routes, routeMTU); err != nil {
		d.log.Error("routing peers' prefixes into the TUN", "err", err)
	}
	d.pruneFast()
	d.pruneKernel()
	if d.mcast != nil {
		allowed := map[key.Public][]netip.Prefix{}
		for _, pc := range want {
			allowed[pc.Key] = pc.AllowedIPs
		}
		self := ranges[d.pub]
		if hp := d.hostPrefix(); hp.IsValid() {
			self = append([]netip.Prefix{netip.PrefixFrom(hp.Addr(), 32)}, self...)
		}
		d.mcast.setPeers(self, peers, allowed)
	}
	if d.dns != nil {
		// Names of peers that left are withdrawn at once and come back
		// with them. The whole set once, then only the peers that
		// changed: SetReachable reads every peer and entry, and on
		// every reconcile that was O(N) per host per change (sim's node
		// loop does the same).
		switch {
		case !d.dnsToldReach:
			d.dns.SetReachable(reachable)
			d.dnsToldReach = true
		case len(reachUp) > 0 || len(reachDown) > 0:
			d.dns.PeersChanged(reachUp, reachDown)
		}
	}
}

func (d *Daemon) nudge() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}
