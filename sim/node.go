package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/dns"
	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/ipam"
	"github.com/weavewg/weavewg/types/key"
)

// The daemon's timings (daemon/ipam.go): the allocator ticks every second
// and gossips its whole ring every tenth tick; the DNS table's anti-entropy
// runs every dns.DefaultGossipInterval.
const (
	tickInterval     = time.Second
	antiEntropyTicks = 10
	dnsTicks         = int(dns.DefaultGossipInterval / tickInterval)
)

// ControlPort is the port every simulated peer listens on.
const ControlPort = discovery.DefaultPort

// Node is one simulated peer: its router, allocator and name table, and
// one container whose address comes from IPAM and whose name is Name.
type Node struct {
	Index  int
	Key    key.Public
	IP     netip.Addr // its address on the in-memory underlay
	Name   string     // the DNS name of its container
	Router *discovery.Router
	IPAM   *ipam.Allocator
	DNS    *dns.Server

	addr   atomic.Pointer[netip.Addr] // its container's address, once allocated
	done   chan struct{}
	wg     sync.WaitGroup
	log    *slog.Logger
	reach  map[key.Public]bool // owned by loop
	ticks  int                 // owned by loop
	dnsDue int                 // owned by loop: the tick of the next DNS anti-entropy round
}

// Addr is the node's container address; invalid until IPAM gave it one.
func (nd *Node) Addr() netip.Addr {
	if a := nd.addr.Load(); a != nil {
		return *a
	}
	return netip.Addr{}
}

// Endpoint is the node's control address, what a joiner dials.
func (nd *Node) Endpoint() netip.AddrPort { return netip.AddrPortFrom(nd.IP, ControlPort) }

type nodeConfig struct {
	index     int
	ip        netip.Addr
	secret    key.Secret
	rng       netip.Prefix
	network   *Network
	verify    discovery.Verifier
	connLimit int
	hsTimeout time.Duration
	rdTimeout time.Duration
	seed      bool // creates the network: owns the whole range
	routers   bool // the router alone: no allocator, no name table
	bootstrap []netip.AddrPort
	logger    *slog.Logger
}

// startNode starts a peer the way `weavewg launch` (seed) or `join` does.
func startNode(cfg nodeConfig) (*Node, error) {
	priv, err := key.NewPrivate()
	if err != nil {
		return nil, err
	}
	log := cfg.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nd := &Node{
		Index: cfg.index,
		Key:   priv.Public(),
		IP:    cfg.ip,
		Name:  fmt.Sprintf("n%d", cfg.index),
		done:  make(chan struct{}),
		log:   log.With("node", cfg.index),
		reach: map[key.Public]bool{},
	}
	r, err := discovery.New(discovery.Config{
		Private:          priv,
		Secret:           cfg.secret,
		Nickname:         nd.Name,
		Port:             ControlPort,
		ListenAddr:       nd.Endpoint().String(),
		Range:            cfg.rng,
		ConnLimit:        cfg.connLimit,
		Network:          cfg.network.Host(cfg.ip),
		HandshakeTimeout: cfg.hsTimeout,
		ReadTimeout:      cfg.rdTimeout,
		Verify:           cfg.verify,
		Logger:           nd.log.With("part", "discovery"),
	})
	if err != nil {
		return nil, err
	}
	nd.Router = r
	if cfg.routers {
		return nd, nd.startRouter(cfg.bootstrap)
	}
	var alloc *ipam.Allocator
	ipamCh, err := r.Channel("ipam", func(from key.Public, msg []byte) {
		alloc.HandleMessage(from, msg)
	})
	if err != nil {
		r.Close()
		return nil, err
	}
	var names *dns.Server
	dnsCh, err := r.Channel("dns", func(from key.Public, msg []byte) {
		names.HandleMessage(from, msg)
	})
	if err != nil {
		r.Close()
		return nil, err
	}
	alloc, err = ipam.Open(ipam.Config{
		Self:      nd.Key,
		Private:   priv,
		Range:     cfg.rng,
		NoSync:    true,
		Transport: ipamCh,
		Verify:    cfg.verify,
		Logger:    nd.log.With("part", "ipam"),
	})
	if err != nil {
		r.Close()
		return nil, err
	}
	nd.IPAM = alloc
	names, err = dns.New(dns.Config{
		Self:           nd.Key,
		Upstreams:      []string{"192.0.2.53"}, // never asked: the simulation only gossips
		GossipInterval: -1,                     // the node loop drives Tick
		Transport:      dnsCh,
		Logger:         nd.log.With("part", "dns"),
	})
	if err != nil {
		alloc.Close()
		r.Close()
		return nil, err
	}
	nd.DNS = names
	if cfg.seed {
		if err := alloc.Seed(); err != nil {
			nd.close()
			return nil, err
		}
	} else {
		alloc.WantSpace()
	}
	if err := nd.startRouter(cfg.bootstrap); err != nil {
		return nil, err
	}
	nd.wg.Add(2)
	go nd.loop()
	go nd.attach()
	return nd, nil
}

// startRouter starts the router and gives it its bootstrap targets.
func (nd *Node) startRouter(bootstrap []netip.AddrPort) error {
	if err := nd.Router.Start(); err != nil {
		nd.close()
		return err
	}
	for _, b := range bootstrap {
		if err := nd.Router.Connect(b.String()); err != nil {
			nd.close()
			return err
		}
	}
	return nil
}

// close stops the node like a host going away: connections close, state
// is gone.
func (nd *Node) close() {
	select {
	case <-nd.done:
	default:
		close(nd.done)
	}
	nd.wg.Wait()
	nd.Router.Close()
	if nd.DNS != nil {
		nd.DNS.Close()
	}
	if nd.IPAM != nil {
		nd.IPAM.Close()
	}
}

// loop is the control-plane half of the daemon's reconcile loop
// (daemon.reconcileLoop, reconcile and ipamTick).
func (nd *Node) loop() {
	defer nd.wg.Done()
	tick := time.NewTicker(tickInterval)
	defer tick.Stop()
	ringChanged := nd.IPAM.Updated()
	nd.reconcile()
	nd.dnsDue = dnsTicks
	for {
		select {
		case <-nd.done:
			return
		case <-tick.C:
			nd.IPAM.Tick()
			nd.ticks++
			if nd.ticks%antiEntropyTicks == 0 {
				nd.ipamAntiEntropy()
				// As dns.Server's own loop: a digest to one peer every
				// interval (dns/digest.go), whatever the size.
				if k, ok := nd.randomPeer(); ok {
					nd.DNS.SendDigest(k)
				}
			}
			if nd.ticks >= nd.dnsDue {
				// As dns.Server's own loop: a round sends to every
				// peer, so past beat.SpreadPeers peers it comes less
				// often. Every 10 s whatever the size made the
				// simulation's idle traffic grow with N (65-77 frames
				// per peer per second at 300) where a daemon's does not.
				nd.DNS.Tick()
				nd.dnsDue = nd.ticks + int(beat.Spread(dns.DefaultGossipInterval, len(nd.reach))/tickInterval)
			}
			continue
		case <-nd.Router.Changes():
		case <-ringChanged:
		}
		ringChanged = nd.IPAM.Updated()
		nd.reconcile()
	}
}

// reconcile tells IPAM and DNS who is reachable, as daemon.reconcile does;
// a control neighbour that arrives gets a digest of the ring with relay set
// (ipam.Allocator.NewNeighbour): it answers what differs, and each side
// floods what is news to it.
func (nd *Node) reconcile() {
	var reachable, direct []key.Public
	set := map[key.Public]bool{}
	peers := nd.Router.Reachable()
	for _, p := range peers {
		if p.Key == nd.Key {
			continue
		}
		reachable = append(reachable, p.Key)
		set[p.Key] = true
		if p.Direct {
			direct = append(direct, p.Key)
		}
	}
	// Preferred donors (ipam.Allocator.SetNeighbours), as the daemon's
	// reconcile does.
	nd.IPAM.SetNeighbours(direct)
	changed := len(set) != len(nd.reach)
	for k := range set {
		if !nd.reach[k] {
			changed = true
		}
	}
	if changed {
		var arrived, others []key.Public
		for _, p := range peers {
			if set[p.Key] && !nd.reach[p.Key] {
				if p.Direct {
					arrived = append(arrived, p.Key)
				} else {
					others = append(others, p.Key)
				}
			}
		}
		nd.reach = set
		nd.IPAM.SetPeers(reachable)
		for _, k := range arrived {
			nd.IPAM.NewNeighbour(k)
		}
		if len(others) <= ipam.MaxSendOwnArrivals {
			for _, k := range others {
				nd.IPAM.SendOwn(k)
			}
		}
	}
	// Every round, changed or not, as the daemon does: it also marks
	// down the owners of entries that arrived since the last call.
	nd.DNS.SetReachable(reachable)
}

// ipamAntiEntropy sends a digest of the ring to one reachable peer chosen
// at random, which answers with what differs (daemon.ipamAntiEntropy).
func (nd *Node) ipamAntiEntropy() {
	if k, ok := nd.randomPeer(); ok {
		nd.IPAM.SendDigest(k)
	}
}

// randomPeer picks a reachable peer at random.
func (nd *Node) randomPeer() (key.Public, bool) {
	if len(nd.reach) == 0 {
		return key.Public{}, false
	}
	i := rand.IntN(len(nd.reach))
	for k := range nd.reach {
		if i == 0 {
			return k, true
		}
		i--
	}
	return key.Public{}, false
}

// attach gives the node's container an address and a name, as `weavewg
// attach` does: allocate (waiting for space), then register the name.
func (nd *Node) attach() {
	defer nd.wg.Done()
	for {
		updated := nd.IPAM.Updated()
		a, err := nd.IPAM.Allocate("c")
		if err == nil {
			nd.addr.Store(&a)
			if err := nd.DNS.AddEntry(nd.Name, a, "c"); err != nil {
				nd.log.Error("adding the container's name", "err", err)
			}
			return
		}
		if !errors.Is(err, ipam.ErrWaitingForSpace) {
			nd.log.Error("allocating the container's address", "err", err)
			return
		}
		select {
		case <-nd.done:
			return
		case <-updated:
		case <-time.After(tickInterval):
		}
	}
}
