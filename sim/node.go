package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
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

	addr       atomic.Pointer[netip.Addr] // its container's address, once allocated
	step       atomic.Pointer[loopStep]   // what loop does now (LoopStep)
	attachStep atomic.Pointer[loopStep]   // what attach does now (LoopStep)
	done       chan struct{}
	wg         sync.WaitGroup
	log        *slog.Logger
	// Owned by loop: the reachable peers, those of them we have a
	// control connection to, and the router's ReachChanges mark.
	reach  keySet
	direct map[key.Public]bool
	mark   uint64
	ticks  int // owned by loop
	dnsDue int // owned by loop: the tick of the next DNS anti-entropy round
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
	shared    *discovery.SharedRecords
	connLimit int
	hsTimeout time.Duration
	rdTimeout time.Duration
	seed      bool // creates the network: owns the whole range
	routers   bool // the router alone: no allocator, no name table
	bootstrap []netip.AddrPort
	logger    *slog.Logger
	trace     func(discovery.TraceEvent)
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
		Index:  cfg.index,
		Key:    priv.Public(),
		IP:     cfg.ip,
		Name:   fmt.Sprintf("n%d", cfg.index),
		done:   make(chan struct{}),
		log:    log.With("node", cfg.index),
		reach:  newKeySet(),
		direct: map[key.Public]bool{},
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
		Shared:           cfg.shared,
		Logger:           nd.log.With("part", "discovery"),
		Trace:            cfg.trace,
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
			nd.doing("ipam tick")
			nd.IPAM.Tick()
			nd.ticks++
			if nd.ticks%antiEntropyTicks == 0 {
				nd.doing("ipam digest")
				nd.ipamAntiEntropy()
			}
			// As dns.Server's own loop: a digest to one peer every
			// interval whatever the size, and every second for a few
			// seconds after a change (dns/digest.go).
			nd.doing("dns digest")
			nd.DNS.DigestTick()
			if nd.ticks >= nd.dnsDue {
				nd.doing("dns tick")
				// As dns.Server's own loop: a round sends to every
				// peer, so past beat.SpreadPeers peers it comes less
				// often. Every 10 s whatever the size made the
				// simulation's idle traffic grow with N (65-77 frames
				// per peer per second at 300) where a daemon's does not.
				nd.DNS.Tick()
				nd.dnsDue = nd.ticks + int(beat.Spread(dns.DefaultGossipInterval, len(nd.reach.keys))/tickInterval)
			}
			nd.doing("waiting")
			continue
		case <-nd.Router.Changes():
		case <-ringChanged:
		}
		ringChanged = nd.IPAM.Updated()
		nd.doing("reconcile")
		nd.reconcile()
		nd.doing("waiting")
	}
}

// loopStep is what the node loop does now, and since when.
type loopStep struct {
	what  string
	since time.Time
}

// doing records the loop's step (sim's report of a peer that waits).
func (nd *Node) doing(what string) { nd.step.Store(&loopStep{what, time.Now()}) }

// LoopStep says what the node loop and the attach loop do now and for
// how long they have.
func (nd *Node) LoopStep() string {
	say := func(s *loopStep) string {
		if s == nil {
			return "not started"
		}
		return fmt.Sprintf("%s for %.1f s", s.what, time.Since(s.since).Seconds())
	}
	return say(nd.step.Load()) + ", attach " + say(nd.attachStep.Load())
}

// reconcile tells IPAM and DNS who is reachable, as daemon.reconcile does;
// a control neighbour that arrives gets a digest of the ring with relay set
// (ipam.Allocator.NewNeighbour): it answers what differs, and each side
// floods what is news to it.
// It follows the router's reachability change by change
// (discovery.Router.ReachChanges): reading every reachable peer on each
// nudge, with DNS.SetReachable's pass over every peer and entry, was 8 %
// of the simulation's CPU at N=300 and O(N²) per join for the mesh.
func (nd *Node) reconcile() {
	changes, next, full := nd.Router.ReachChanges(nd.mark)
	nd.mark = next
	if full {
		nd.resync(changes)
		return
	}
	// The state after the last change of each peer, in first-change order.
	last := make(map[key.Public]discovery.ReachChange, len(changes))
	var order []key.Public
	for _, c := range changes {
		if _, ok := last[c.Key]; !ok {
			order = append(order, c.Key)
		}
		last[c.Key] = c
	}
	var up, down, arrived, others []key.Public
	directChanged := false
	for _, k := range order {
		c := last[k]
		was := nd.reach.has(k)
		switch {
		case c.Reachable && !was:
			nd.reach.add(k)
			up = append(up, k)
			if c.Direct {
				arrived = append(arrived, k)
			} else {
				others = append(others, k)
			}
		case !c.Reachable && was:
			nd.reach.remove(k)
			down = append(down, k)
		}
		if d := c.Reachable && c.Direct; d != nd.direct[k] {
			directChanged = true
			if d {
				nd.direct[k] = true
			} else {
				delete(nd.direct, k)
			}
		}
	}
	if directChanged {
		// Preferred donors (ipam.Allocator.SetNeighbours) and the DNS
		// quick rounds' peers, as the daemon's reconcile sets them.
		direct := slices.Collect(maps.Keys(nd.direct))
		nd.IPAM.SetNeighbours(direct)
		nd.DNS.SetNeighbours(direct)
	}
	if len(up) == 0 && len(down) == 0 {
		return
	}
	nd.IPAM.PeersChanged(up, down)
	nd.DNS.PeersChanged(up, down)
	nd.sendArrivals(arrived, others)
}

// resync replaces the node's view with every reachable peer (the first
// call, or the router's log no longer reaching back to our mark).
func (nd *Node) resync(all []discovery.ReachChange) {
	var arrived, others []key.Public
	reach := newKeySet()
	direct := map[key.Public]bool{}
	for _, c := range all {
		reach.add(c.Key)
		if c.Direct {
			direct[c.Key] = true
		}
		if !nd.reach.has(c.Key) {
			if c.Direct {
				arrived = append(arrived, c.Key)
			} else {
				others = append(others, c.Key)
			}
		}
	}
	nd.reach, nd.direct = reach, direct
	neighbours := slices.Collect(maps.Keys(direct))
	nd.IPAM.SetNeighbours(neighbours)
	nd.DNS.SetNeighbours(neighbours)
	nd.IPAM.SetPeers(reach.keys)
	nd.DNS.SetReachable(reach.keys)
	nd.sendArrivals(arrived, others)
}

// sendArrivals sends a digest of the ring to arriving control neighbours, and our own
// entries to other arrivals unless many came at once (daemon.reconcile).
func (nd *Node) sendArrivals(arrived, others []key.Public) {
	for _, k := range arrived {
		nd.IPAM.NewNeighbour(k)
	}
	if len(others) <= ipam.MaxSendOwnArrivals {
		for _, k := range others {
			nd.IPAM.SendOwn(k)
		}
	}
}

// keySet is a set of keys that picks a random member in O(1).
type keySet struct {
	keys []key.Public
	pos  map[key.Public]int
}

func newKeySet() keySet { return keySet{pos: map[key.Public]int{}} }

func (s *keySet) has(k key.Public) bool { _, ok := s.pos[k]; return ok }

func (s *keySet) add(k key.Public) {
	if s.has(k) {
		return
	}
	s.pos[k] = len(s.keys)
	s.keys = append(s.keys, k)
}

func (s *keySet) remove(k key.Public) {
	i, ok := s.pos[k]
	if !ok {
		return
	}
	last := s.keys[len(s.keys)-1]
	s.keys[i] = last
	s.pos[last] = i
	s.keys = s.keys[:len(s.keys)-1]
	delete(s.pos, k)
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
	if len(nd.reach.keys) == 0 {
		return key.Public{}, false
	}
	return nd.reach.keys[rand.IntN(len(nd.reach.keys))], true
}

// attach gives the node's container an address and a name, as `weavewg
// attach` does: allocate (waiting for space), then register the name.
func (nd *Node) attach() {
	defer nd.wg.Done()
	for {
		nd.attachStep.Store(&loopStep{"allocating", time.Now()})
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
		nd.attachStep.Store(&loopStep{"waiting", time.Now()})
		select {
		case <-nd.done:
			return
		case <-updated:
		case <-time.After(tickInterval):
		}
	}
}
