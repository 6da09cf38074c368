package mcast

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Config configures an Engine.
type Config struct {
	Self key.Public
	// Subnets are the overlay's subnets: a broadcast to one's broadcast
	// address (or to 255.255.255.255 from an address in it) goes to the
	// hosts with containers in it.
	Subnets []netip.Prefix
	// LinkLocal replicates 224.0.0.0/24 (mDNS, say) to every host with
	// containers in the sender's subnet; off, it stays on its host.
	LinkLocal bool
	// Now gives the first membership seq; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Peer is a reachable host, as replication needs it.
type Peer struct {
	Key key.Public
	// HostIP is where its replicated datagrams go (its overlay address).
	HostIP netip.Addr
	// Sources are the addresses it may send from (its AllowedIPs): a
	// datagram it replicates from any other source is dropped.
	Sources []netip.Prefix
	// Attached are its containers' addresses (broadcasts go to the hosts
	// with containers in the subnet).
	Attached []netip.Prefix
}

// Engine holds the memberships of every host and decides replication.
// Its methods are safe for concurrent use; Outbound and Inbound (the packet
// path) read an immutable view published atomically and take no lock.
type Engine struct {
	// Constant after New.
	cfg Config
	log *slog.Logger

	view atomic.Pointer[view]

	counters counters

	// Guarded by mu.
	mu      sync.Mutex
	seq     uint64
	local   []netip.Addr              // this host's groups, ascending
	remote  map[key.Public]Membership // reachable peers' last state
	peers   map[key.Public]Peer       // reachable peers
	self    []netip.Prefix            // this host's own sources
	subnets []netip.Prefix
}

// view is what the packet path reads; never modified once published.
type view struct {
	local   map[netip.Addr]bool
	byGroup map[netip.Addr][]netip.Addr // group → member hosts' addresses
	byHost  map[netip.Addr]*Peer        // host address → peer
	subnets []subnetView
	self    []netip.Prefix
}

type subnetView struct {
	prefix    netip.Prefix
	broadcast netip.Addr
	hosts     []netip.Addr // hosts with containers in it
}

// New makes an engine with no peers and no groups.
func New(cfg Config) *Engine {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{
		cfg: cfg, log: cfg.Logger,
		seq:    uint64(cfg.Now().UnixNano()),
		remote: map[key.Public]Membership{},
		peers:  map[key.Public]Peer{},
	}
	e.subnets = cfg.Subnets
	e.publishLocked()
	return e
}

// SetSubnets sets the overlay's subnets (Config.Subnets).
func (e *Engine) SetSubnets(subnets []netip.Prefix) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.subnets = subnets
	e.publishLocked()
}

// SetSelf sets the addresses this host's containers send from (its own
// address ranges and host address): only their datagrams are replicated.
func (e *Engine) SetSelf(sources []netip.Prefix) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.self = slices.Clone(sources)
	e.publishLocked()
}

// SetPeers makes peers the reachable hosts. It returns the peers that were
// not reachable before: they get this host's membership at once (Message),
// and send theirs. An unreachable peer's groups are kept but not used.
func (e *Engine) SetPeers(peers []Peer) (added []key.Public) {
	e.mu.Lock()
	defer e.mu.Unlock()
	next := make(map[key.Public]Peer, len(peers))
	for _, p := range peers {
		if p.Key == e.cfg.Self {
			continue
		}
		next[p.Key] = p
		if _, ok := e.peers[p.Key]; !ok {
			added = append(added, p.Key)
		}
	}
	e.peers = next
	e.publishLocked()
	return added
}

// SetLocalGroups makes groups this host's groups with members (from the
// bridge's snooping table). It reports whether they changed; then Message
// is the new state to tell every peer.
func (e *Engine) SetLocalGroups(groups []netip.Addr) bool {
	gs := sortedGroups(groups)
	if len(gs) > MaxGroups {
		e.counters.groupsOverLimit.Add(1)
		gs = gs[:MaxGroups]
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if slices.Equal(gs, e.local) {
		return false
	}
	e.local = gs
	e.seq++
	e.publishLocked()
	return true
}

// Message is this host's membership message.
func (e *Engine) Message() []byte {
	e.mu.Lock()
	m := Membership{Seq: e.seq, Groups: e.local}
	e.mu.Unlock()
	b, err := AppendMembership(nil, m)
	if err != nil {
		// SetLocalGroups keeps local valid, sorted and bounded.
		panic(fmt.Sprintf("mcast: own membership: %v", err))
	}
	return b
}

// HandleMessage takes a peer's membership message. from is the peer the
// channel verified as its author.
func (e *Engine) HandleMessage(from key.Public, msg []byte) error {
	m, err := ParseMembership(msg)
	if err != nil {
		e.counters.membershipMalformed.Add(1)
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if from == e.cfg.Self {
		e.counters.membershipUnknownPeer.Add(1)
		return nil
	}
	// Kept even from a peer not (yet) reachable here: the channel verified
	// its author, and the two sides learn of each other's reachability in
	// either order. Only reachable peers' groups are used.
	if old, ok := e.remote[from]; ok && old.Seq >= m.Seq {
		e.counters.membershipStale.Add(1)
		return nil
	}
	e.remote[from] = m
	e.publishLocked()
	return nil
}

func (e *Engine) publishLocked() {
	v := &view{
		local:   map[netip.Addr]bool{},
		byGroup: map[netip.Addr][]netip.Addr{},
		byHost:  map[netip.Addr]*Peer{},
		self:    e.self,
	}
	for _, g := range e.local {
		v.local[g] = true
	}
	keys := slices.SortedFunc(maps.Keys(e.peers), func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	for _, k := range keys {
		p := e.peers[k]
		if !p.HostIP.IsValid() {
			continue
		}
		v.byHost[p.HostIP] = &p
		for _, g := range e.remote[k].Groups {
			v.byGroup[g] = append(v.byGroup[g], p.HostIP)
		}
	}
	// Most specific first, so a subnet nested in another is found first;
	// a container's address belongs to the most specific subnet that
	// holds it.
	for _, s := range e.subnets {
		v.subnets = append(v.subnets, subnetView{prefix: s.Masked(), broadcast: broadcastOf(s)})
	}
	slices.SortFunc(v.subnets, func(a, b subnetView) int { return b.prefix.Bits() - a.prefix.Bits() })
	for _, k := range keys {
		p := e.peers[k]
		if !p.HostIP.IsValid() {
			continue
		}
		for i := range v.subnets {
			sv := &v.subnets[i]
			if slices.ContainsFunc(p.Attached, func(a netip.Prefix) bool { return v.subnetIndex(a.Addr()) == i }) {
				sv.hosts = append(sv.hosts, p.HostIP)
			}
		}
	}
	e.view.Store(v)
}

// Outbound decides where a datagram a container sent onto the bridge goes:
// the overlay addresses of the hosts to replicate it to, none if it stays
// here. pkt is the IPv4 packet; when targets is not empty its TTL has been
// decremented (the host is the router between the container's link and the
// other hosts), and it is ready to send.
func (e *Engine) Outbound(pkt []byte) (targets []netip.Addr) {
	v := e.view.Load()
	h, ok := parseIPv4(pkt)
	if !ok {
		e.counters.txMalformed.Add(1)
		return nil
	}
	if h.proto == protoIGMP {
		// Membership reports are this link's business; the bridge snoops them.
		return nil
	}
	if !containsAddr(v.self, h.src) {
		// Not a container of this host: never replicated again, which
		// also keeps anything that came from the overlay from looping.
		e.counters.txNotLocal.Add(1)
		return nil
	}
	switch {
	case h.dst.IsLinkLocalMulticast():
		if !e.cfg.LinkLocal {
			e.counters.txLinkLocal.Add(1)
			return nil
		}
		targets = v.subnetOf(h.src, netip.Addr{})
	case h.dst.IsMulticast():
		targets = v.byGroup[h.dst]
	case h.dst == limitedBroadcast:
		targets = v.subnetOf(h.src, netip.Addr{})
	default:
		targets = v.subnetOf(h.src, h.dst)
		if targets == nil && !v.isBroadcast(h.dst) {
			e.counters.txNotMulticast.Add(1)
			return nil
		}
	}
	if len(targets) == 0 {
		e.counters.txNoMembers.Add(1)
		return nil
	}
	if h.ttl <= 1 {
		e.counters.txTTL.Add(1)
		return nil
	}
	decrementTTL(pkt)
	completeUDPChecksum(pkt, h)
	e.counters.txDatagrams.Add(1)
	return targets
}

// Sent counts the outcome of one replicated copy.
func (e *Engine) Sent(err error) {
	if err != nil {
		e.counters.txSendFailed.Add(1)
		return
	}
	e.counters.txReplicated.Add(1)
}

// subnetIndex is the index of the most specific subnet holding a, or -1.
func (v *view) subnetIndex(a netip.Addr) int {
	for i, s := range v.subnets {
		if s.prefix.Contains(a) {
			return i
		}
	}
	return -1
}

// subnetOf returns the hosts with containers in the subnet that holds src
// (and whose broadcast address is bcast, if bcast is valid).
func (v *view) subnetOf(src, bcast netip.Addr) []netip.Addr {
	i := v.subnetIndex(src)
	if i < 0 || (bcast.IsValid() && v.subnets[i].broadcast != bcast) {
		return nil
	}
	return v.subnets[i].hosts
}

func (v *view) isBroadcast(a netip.Addr) bool {
	for _, s := range v.subnets {
		if s.broadcast == a {
			return true
		}
	}
	return false
}

// Inbound checks a datagram another host replicated to this one: from is
// the UDP source address, which arrived through WireGuard, so it is the
// sending peer's own (cryptokey routing). It returns the IPv4 packet to put
// on the bridge and the Ethernet address to send it to, or ok false (the
// drop is counted).
func (e *Engine) Inbound(from netip.Addr, payload []byte) (pkt []byte, dst net.HardwareAddr, ok bool) {
	v := e.view.Load()
	p := v.byHost[from]
	if p == nil {
		e.counters.rxUnknownPeer.Add(1)
		return nil, nil, false
	}
	pkt, err := ParseData(payload)
	if err != nil {
		e.counters.rxMalformed.Add(1)
		return nil, nil, false
	}
	h, hok := parseIPv4(pkt)
	if !hok || ipv4Checksum(pkt[:h.hdrLen]) != 0 {
		e.counters.rxMalformed.Add(1)
		return nil, nil, false
	}
	pkt = pkt[:h.totalLen]
	if !containsAddr(p.Sources, h.src) {
		e.counters.rxSource.Add(1)
		return nil, nil, false
	}
	if h.proto == protoIGMP || h.ttl == 0 {
		e.counters.rxMalformed.Add(1)
		return nil, nil, false
	}
	switch {
	case h.dst.IsLinkLocalMulticast():
		if !e.cfg.LinkLocal {
			e.counters.rxLinkLocal.Add(1)
			return nil, nil, false
		}
		dst = groupMAC(h.dst)
	case h.dst.IsMulticast():
		if !v.local[h.dst] {
			e.counters.rxNoMembers.Add(1)
			return nil, nil, false
		}
		dst = groupMAC(h.dst)
	case h.dst == limitedBroadcast || v.isBroadcast(h.dst):
		dst = broadcastMAC
	default:
		e.counters.rxNotMulticast.Add(1)
		return nil, nil, false
	}
	return pkt, dst, true
}

// Delivered counts the outcome of putting an Inbound packet on the bridge.
func (e *Engine) Delivered(err error) {
	if err != nil {
		e.counters.rxDeliverFailed.Add(1)
		return
	}
	e.counters.rxDelivered.Add(1)
}

// Groups is this host's groups and each reachable peer's, for status.
func (e *Engine) Groups() (local []netip.Addr, remote map[key.Public][]netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	remote = map[key.Public][]netip.Addr{}
	for k, m := range e.remote {
		if len(m.Groups) > 0 {
			remote[k] = slices.Clone(m.Groups)
		}
	}
	return slices.Clone(e.local), remote
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
