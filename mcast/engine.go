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
	// Subnets are this host's subnets at the start (SetSubnets).
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
}

// Member is a group with a member on one of this host's subnets.
type Member struct {
	Subnet netip.Prefix
	Group  netip.Addr
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
	subnets []netip.Prefix            // this host's, ascending
	members []Member                  // this host's, as last set
	local   []SubnetGroups            // this host's announced state
	remote  map[key.Public]Membership // peers' last state
	peers   map[key.Public]Peer       // reachable peers
	self    []netip.Prefix            // this host's own sources
}

// view is what the packet path reads; never modified once published.
type view struct {
	subnets  []netip.Prefix                // this host's, most specific first
	local    map[Member]bool               // this host's members
	byMember map[Member][]netip.Addr       // → hosts with members of the group on the subnet
	bySubnet map[netip.Prefix][]netip.Addr // → hosts with containers on the subnet
	byHost   map[netip.Addr]*Peer          // host address → peer
	self     []netip.Prefix
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
	e.subnets = sortedSubnets(cfg.Subnets)
	e.local = e.localLocked()
	e.publishLocked()
	return e
}

// SetSubnets makes subnets this host's subnets: those its containers are
// on (the default subnet included). A container's datagram is scoped to
// the most specific of them that holds its address: it goes to the hosts
// announcing members (or, for a broadcast, containers) on that subnet,
// and one from another host is delivered only if its source is on one of
// them. It reports whether the announced state changed; then Message is
// the new state to tell every peer.
func (e *Engine) SetSubnets(subnets []netip.Prefix) bool {
	ss := sortedSubnets(subnets)
	e.mu.Lock()
	defer e.mu.Unlock()
	if slices.Equal(ss, e.subnets) {
		return false
	}
	e.subnets = ss
	return e.updateLocalLocked()
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

// SetLocalGroups makes members this host's groups with members, each on
// the subnet of the container that joined (from the bridge's snooping
// table). Members on a subnet that is not this host's are left out. It
// reports whether the announced state changed; then Message is the new
// state to tell every peer.
func (e *Engine) SetLocalGroups(members []Member) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.members = slices.Clone(members)
	return e.updateLocalLocked()
}

// updateLocalLocked recomputes the announced state; a change takes a new
// seq and is published.
func (e *Engine) updateLocalLocked() bool {
	next := e.localLocked()
	if slices.EqualFunc(next, e.local, func(a, b SubnetGroups) bool {
		return a.Subnet == b.Subnet && slices.Equal(a.Groups, b.Groups)
	}) {
		return false
	}
	e.local = next
	e.seq++
	e.publishLocked()
	return true
}

// localLocked is the announced state: each subnet with its groups, within
// the limits (what is over them is counted and left out).
func (e *Engine) localLocked() []SubnetGroups {
	ss := e.subnets
	if len(ss) > MaxSubnets {
		e.counters.subnetsOverLimit.Add(1)
		ss = ss[:MaxSubnets]
	}
	out := make([]SubnetGroups, 0, len(ss))
	total := 0
	for _, s := range ss {
		var gs []netip.Addr
		for _, m := range e.members {
			if m.Subnet.Masked() == s {
				gs = append(gs, m.Group)
			}
		}
		gs = sortedGroups(gs)
		if total+len(gs) > MaxGroups {
			e.counters.groupsOverLimit.Add(1)
			gs = gs[:MaxGroups-total]
		}
		total += len(gs)
		out = append(out, SubnetGroups{Subnet: s, Groups: gs})
	}
	return out
}

// Message is this host's membership message.
func (e *Engine) Message() []byte {
	e.mu.Lock()
	m := Membership{Seq: e.seq, Subnets: e.local}
	e.mu.Unlock()
	b, err := AppendMembership(nil, m)
	if err != nil {
		// localLocked keeps local valid, sorted and bounded.
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
		subnets:  slices.Clone(e.subnets),
		local:    map[Member]bool{},
		byMember: map[Member][]netip.Addr{},
		bySubnet: map[netip.Prefix][]netip.Addr{},
		byHost:   map[netip.Addr]*Peer{},
		self:     e.self,
	}
	// Most specific first, so a subnet nested in another is found first:
	// a container's address belongs to the most specific subnet holding it.
	slices.SortStableFunc(v.subnets, func(a, b netip.Prefix) int { return b.Bits() - a.Bits() })
	for _, s := range e.local {
		for _, g := range s.Groups {
			v.local[Member{s.Subnet, g}] = true
		}
	}
	keys := slices.SortedFunc(maps.Keys(e.peers), func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	for _, k := range keys {
		p := e.peers[k]
		if !p.HostIP.IsValid() {
			continue
		}
		v.byHost[p.HostIP] = &p
		for _, s := range e.remote[k].Subnets {
			v.bySubnet[s.Subnet] = append(v.bySubnet[s.Subnet], p.HostIP)
			for _, g := range s.Groups {
				m := Member{s.Subnet, g}
				v.byMember[m] = append(v.byMember[m], p.HostIP)
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
	s, ok := v.subnetOf(h.src)
	if !ok {
		e.counters.txNoSubnet.Add(1)
		return nil
	}
	switch {
	case h.dst.IsLinkLocalMulticast():
		if !e.cfg.LinkLocal {
			e.counters.txLinkLocal.Add(1)
			return nil
		}
		targets = v.bySubnet[s]
	case h.dst.IsMulticast():
		targets = v.byMember[Member{s, h.dst}]
	case h.dst == limitedBroadcast || h.dst == broadcastOf(s):
		targets = v.bySubnet[s]
	default:
		e.counters.txNotMulticast.Add(1)
		return nil
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

// subnetOf returns this host's most specific subnet holding a.
func (v *view) subnetOf(a netip.Addr) (netip.Prefix, bool) {
	for _, s := range v.subnets {
		if s.Contains(a) {
			return s, true
		}
	}
	return netip.Prefix{}, false
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
	// Delivered only within the sender's subnet: none of this host's
	// containers is on it, or (multicast) none of its members there is
	// in the group. The bridge scopes it to that subnet's ports.
	s, ok := v.subnetOf(h.src)
	if !ok {
		e.counters.rxSubnet.Add(1)
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
		if !v.local[Member{s, h.dst}] {
			e.counters.rxNoMembers.Add(1)
			return nil, nil, false
		}
		dst = groupMAC(h.dst)
	case h.dst == limitedBroadcast || h.dst == broadcastOf(s):
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

// Groups is this host's groups and each peer's with some, whatever their
// subnet, for status.
func (e *Engine) Groups() (local []netip.Addr, remote map[key.Public][]netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	remote = map[key.Public][]netip.Addr{}
	for k, m := range e.remote {
		if gs := allGroups(m.Subnets); len(gs) > 0 {
			remote[k] = gs
		}
	}
	return allGroups(e.local), remote
}

// allGroups is the groups of ss, ascending, without repeats.
func allGroups(ss []SubnetGroups) []netip.Addr {
	var gs []netip.Addr
	for _, s := range ss {
		gs = append(gs, s.Groups...)
	}
	return sortedGroups(gs)
}

// sortedSubnets returns the valid subnets of ss, masked, ascending,
// without repeats.
func sortedSubnets(ss []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		if s.IsValid() && s.Addr().Is4() {
			out = append(out, s.Masked())
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
