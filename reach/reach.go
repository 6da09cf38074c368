// Package reach decides how each peer is reached, and why: straight to an
// endpoint, or through a relay (later a kernel or VXLAN path beside them).
//
// It is the one owner of that choice. A Machine is a pure state machine:
// no goroutines, no clock reads, no I/O. Its owner (the tunnel's path loop)
// feeds it events with the time and carries out what it decides:
//
//   - SetPeers: gossip's view (the peer's listen address, the reflexive
//     address it advertised, the relay chosen by Relays, whether gossip's
//     route already goes through it, whether we depend on the peer to hold
//     our NAT mapping open);
//   - ICE / ICELost: the address pion/ice selected for the peer, or its end;
//   - Learned: the address an authenticated datagram of the peer came from
//     (its relay frames and probes; WireGuard roams by itself);
//   - DirectReply: a probe sent straight to the peer's endpoint answered;
//   - RelayReply: a probe sent through its relay answered;
//   - Active: WireGuard data went to or came from the peer;
//   - Tick: time passes; the paths are decided again.
//
// How a peer is reached (Path):
//
//   - Endpoint: the newest of the address learned from the peer's
//     authenticated traffic and the address ICE selected; else the
//     reflexive address the peer advertised (where STUN saw it: its NAT's
//     mapping); else gossip's listen address. A new gossip address forgets
//     what traffic and ICE taught (the peer moved), except an address on
//     the new gossip address's IP (traffic got there first).
//   - Relayed: a peer without a relay is always direct. One with a relay is
//     direct while its direct probes were answered within DeadAfter;
//     relayed when they were not and the relay answered a probe sent
//     after the last direct answer came, or when it has no endpoint at all; until it has
//     been probed for DeadAfter it keeps gossip's first guess (relayed when
//     gossip's route goes through another peer). Hysteresis, so that a
//     starved host's late or bunched replies do not flip a pair between
//     paths every few seconds (each flip costs a handshake, and on a
//     kernel-datapath host a move between devices): a direct path whose
//     replies stopped while the relay's stopped too is kept (the relay is
//     no better, and the gap is more likely the host's than the path's);
//     and a pair that fell from direct to relayed goes back only once
//     its direct probes have been answered without a gap of SteadyGap
//     for SteadyFor.
//   - Keepalive: see KeepaliveFor; and none before a probe of the peer was
//     answered on the path in use. A handshake wireguard-go starts on a path
//     that does not work yet is lost, and wireguard-go then starts no other
//     for 5 s (its retry timer): the first packet a user sends would wait
//     for it. Without early attempts, that packet's own handshake goes out
//     at once.
//
// A pair is idle (Path.Idle) when it carried no WireGuard data for
// IdleAfter (counted from when the peer appeared, or its last data), no
// active peer is relayed through it, and we do not depend on the peer to
// hold our NAT mapping open (a host not known to be public keeps the
// mappings towards its control neighbours and relays warm, issue 12). The owner sends an idle peer no probes, no MTU
// probes and no keepalives, and NAT traversal runs no ICE for it, so the
// idle cost of a host does not grow with the mesh (issue 18). An idle
// peer's path is frozen as it was, except that one whose endpoint was not
// its gossip listen address (a NAT mapping learned from traffic, ICE or
// STUN) parks on its relay: that mapping may expire while nobody sends, and
// the first packet after the pause must not be lost on it. The first data
// wakes the pair: it is probed at once and decided as a new peer is, its
// frozen path kept until probes tell (DeadAfter).
//
// Path.Why says in words which rule decided, for `status connections`.
package reach

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// DeadAfter is how long a direct path may go unanswered before the peer is
// relayed (when it has a relay).
const DeadAfter = 5 * time.Second

// SteadyFor is how long direct replies must come without a gap longer
// than SteadyGap before a pair that fell to its relay goes back direct.
// Probes go every second, so SteadyGap is two lost in a row.
const (
	SteadyFor = 3 * time.Second
	SteadyGap = 2500 * time.Millisecond
)

// DefaultIdleAfter is how long a pair may carry no data before it goes
// idle. Long enough that a pair in use (a request every few tens of
// seconds) keeps its path warm; short enough that a mesh of thousands of
// mostly quiet pairs costs little.
const DefaultIdleAfter = 60 * time.Second

// Source says where an endpoint came from.
type Source uint8

const (
	SourceNone      Source = iota
	SourceGossip           // the peer's listen address in gossip
	SourceReflexive        // where STUN saw the peer, as it advertised
	SourceICE              // the pair ICE selected
	SourceTraffic          // the peer's authenticated datagrams came from there
)

func (s Source) String() string {
	switch s {
	case SourceGossip:
		return "gossip"
	case SourceReflexive:
		return "reflexive"
	case SourceICE:
		return "ice"
	case SourceTraffic:
		return "traffic"
	}
	return "none"
}

// Keepalive says which side of a pair sends WireGuard keepalives.
type Keepalive uint8

const (
	KeepaliveByKey Keepalive = iota // the side with the smaller key
	KeepaliveOn                     // we do, whatever the key order
	KeepaliveOff                    // we do not: the other side does
)

// Peer is gossip's view of one peer.
type Peer struct {
	Key    key.Public
	Gossip netip.AddrPort // its listen address as gossip has it; invalid: unknown
	// Reflexive is the address STUN showed the peer at, as it advertised
	// (nat's SignalReflexive); invalid: none.
	Reflexive netip.AddrPort
	Via       key.Public // the relay to fall back to (Relays); zero: none
	// StartRelayed: gossip's route goes through another peer, so start
	// relayed until probes tell.
	StartRelayed bool
	// DependsOn: we need this peer to hold our NAT mapping open (a control
	// neighbour, or a relay we use).
	DependsOn bool
}

// Path is how a peer is reached.
type Path struct {
	Endpoint  netip.AddrPort // where direct datagrams go; invalid: none known
	From      Source         // where Endpoint came from
	Relayed   bool           // datagrams go through Via
	Via       key.Public     // the relay; zero: none
	Keepalive Keepalive
	Idle      bool // no probes, keepalives or ICE until the next data
	// Hold: send the peer nothing straight (no direct probes, no ICE) for
	// now; its NAT must see our peer's datagram first (see Opening).
	Hold bool
	// Opening: this is our turn to send first, and our datagrams go to the
	// peer's NAT mapping (not gossip's guess of its listen port): tell the
	// peer, which holds off until then (the tunnel flags its relayed
	// probes; see Opening).
	Opening bool
	// PeerRelays: the peer's newest probe said it sends to us through its
	// relay, whatever our own choice (PeerSays). Our path is not changed by
	// it, but a kernel-datapath host keeps such a peer off its kernel
	// device: the peer's relayed WireGuard datagrams reach the userspace
	// socket, and only wireguard-go can read a session made there. It
	// stays until a probe says otherwise (an idle peer sends none; being
	// kept on wireguard-go costs speed, not reach).
	PeerRelays bool
	Why        string // the rule that decided Relayed, in words
}

// peer is the state of one peer. Times are zero when never.
type peer struct {
	in        Peer
	added     time.Time
	since     time.Time // added, or when the pair last woke: probes count from here
	active    time.Time // last WireGuard data; zero: none yet
	ice       netip.AddrPort
	iceAt     time.Time
	learned   netip.AddrPort
	learnedAt time.Time
	lastReply time.Time
	upSince   time.Time // the first direct reply of the current unbroken run (SteadyGap)
	lastRelay time.Time // when the newest answered relayed probe was sent
	fell      bool      // went from direct to relayed for want of replies: back only when steady
	opened    bool      // a direct probe answered since the peer appeared: no more holds
	// peerOpening: when the peer last told us it sends to our NAT mapping
	// in its opening turn (zero: never).
	peerOpening time.Time
	// takesIn: when the peer last told us our NAT took its datagram in
	// (ICMP port unreachable; zero: never).
	takesIn time.Time
	// saysRelayed, saysDirect: when the peer's probes last said it sends
	// to us through its relay, and last said it does not (PeerSays).
	saysRelayed, saysDirect time.Time
	path                    Path
}

// Machine holds the path of every peer. Not safe for concurrent use.
type Machine struct {
	self      key.Public
	public    bool          // STUN through other peers showed no NAT
	idleAfter time.Duration // 0: pairs never go idle
	peers     map[key.Public]*peer
}

// New makes a Machine for the peer self; pairs go idle after
// DefaultIdleAfter.
func New(self key.Public) *Machine {
	return &Machine{self: self, idleAfter: DefaultIdleAfter, peers: map[key.Public]*peer{}}
}

// SetIdleAfter sets how long a pair may carry no data before it goes idle;
// 0 keeps every pair active.
func (m *Machine) SetIdleAfter(d time.Duration) { m.idleAfter = max(d, 0) }

// Active records that WireGuard data went to or came from k at t.
func (m *Machine) Active(t time.Time, k key.Public) {
	if p := m.peers[k]; p != nil && t.After(p.active) {
		p.active = t
	}
}

// NATTakesIn records that k told us at t that our NAT answered its
// datagram to our mapping with ICMP port unreachable: it took k's
// datagram in and confirmed it in conntrack, so sending in k's opening
// turn would only spoil our mapping (see Opening).
func (m *Machine) NATTakesIn(t time.Time, k key.Public) {
	if p := m.peers[k]; p != nil && t.After(p.takesIn) {
		p.takesIn = t
	}
}

// TakesInFor is how long a peer's word that our NAT takes unsolicited
// datagrams in holds.
const TakesInFor = 10 * time.Minute

// SetPublic records whether this host is known to have a public address.
func (m *Machine) SetPublic(public bool) { m.public = public }

// SetPeers replaces gossip's view: new peers start, departed ones are
// forgotten, and a peer whose gossip address changed forgets what ICE and
// traffic taught about it (unless on the new address's IP). It decides
// again at now and returns the peers whose path changed.
func (m *Machine) SetPeers(now time.Time, ps []Peer) []key.Public {
	seen := make(map[key.Public]bool, len(ps))
	for _, in := range ps {
		if in.Key.IsZero() || in.Key == m.self || seen[in.Key] {
			continue
		}
		seen[in.Key] = true
		in.Gossip, in.Reflexive = unmap(in.Gossip), unmap(in.Reflexive)
		p := m.peers[in.Key]
		if p == nil {
			p = &peer{added: now, since: now}
			p.path.Relayed = in.StartRelayed && !in.Via.IsZero()
			m.peers[in.Key] = p
		} else if p.in.Gossip != in.Gossip {
			// The peer moved: what ICE and traffic taught is stale, unless
			// it is at the new address already (traffic from a roamed peer
			// shows its new mapping seconds before its control connection
			// comes back from there and gossip follows; forgetting it sent
			// us to the stale reflexive address until traffic taught it
			// again: the VM's roaming run, 3 s).
			if !p.ice.IsValid() || p.ice.Addr() != in.Gossip.Addr() {
				p.ice, p.iceAt = netip.AddrPort{}, time.Time{}
			}
			if !p.learned.IsValid() || p.learned.Addr() != in.Gossip.Addr() {
				p.learned, p.learnedAt = netip.AddrPort{}, time.Time{}
			}
		}
		p.in = in
	}
	for k := range m.peers {
		if !seen[k] {
			delete(m.peers, k)
		}
	}
	return m.Tick(now)
}

// ICE records the address ICE selected for k.
func (m *Machine) ICE(now time.Time, k key.Public, addr netip.AddrPort) {
	if p := m.peers[k]; p != nil && addr.IsValid() {
		p.ice, p.iceAt = unmap(addr), now
	}
}

// ICELost forgets the address ICE had selected for k.
func (m *Machine) ICELost(k key.Public) {
	if p := m.peers[k]; p != nil {
		p.ice, p.iceAt = netip.AddrPort{}, time.Time{}
	}
}

// Learned records that an authenticated datagram of k came from addr. It
// reports whether k's endpoint changes.
func (m *Machine) Learned(now time.Time, k key.Public, addr netip.AddrPort) bool {
	p := m.peers[k]
	if p == nil || !addr.IsValid() {
		return false
	}
	addr = unmap(addr)
	changed := addr != p.path.Endpoint
	p.learned, p.learnedAt = addr, now
	return changed
}

// DirectReply records that a probe sent straight to k's endpoint answered.
func (m *Machine) DirectReply(now time.Time, k key.Public) {
	if p := m.peers[k]; p != nil {
		if !now.After(p.lastReply) {
			return // the same reply again (the owner feeds the last one each round)
		}
		if p.lastReply.IsZero() || now.Sub(p.lastReply) > SteadyGap {
			p.upSince = now
		}
		p.lastReply = now
		if !now.Before(p.since) {
			p.opened = true
		}
	}
}

// PeerOpening records that k told us at t that it now sends to our NAT
// mapping in its opening turn (its relayed probes say so).
func (m *Machine) PeerOpening(t time.Time, k key.Public) {
	if p := m.peers[k]; p != nil && t.After(p.peerOpening) {
		p.peerOpening = t
	}
}

// PeerSays records that a probe k sent at t said whether k sends to us
// through its relay (Path.PeerRelays).
func (m *Machine) PeerSays(t time.Time, k key.Public, relayed bool) {
	p := m.peers[k]
	if p == nil {
		return
	}
	if relayed && t.After(p.saysRelayed) {
		p.saysRelayed = t
	}
	if !relayed && t.After(p.saysDirect) {
		p.saysDirect = t
	}
}

// RelayReply records that a probe sent through k's relay at sent was
// answered. The time it was sent, not when the answer came: a starved
// host takes its answers in bunches, and a relayed answer read just after
// the last direct one says nothing of the paths; one to a probe sent after
// the last direct answer came says the relay worked while the direct path
// did not.
func (m *Machine) RelayReply(sent time.Time, k key.Public) {
	if p := m.peers[k]; p != nil && sent.After(p.lastRelay) {
		p.lastRelay = sent
	}
}

// Tick decides every peer's path at now and returns the peers whose path
// changed.
func (m *Machine) Tick(now time.Time) []key.Public {
	var changed []key.Public
	busy := m.busy(now)
	for k, p := range m.peers {
		idle := !busy[k]
		if !idle && p.path.Idle {
			p.since = now // woken: decided afresh from now
		}
		next := m.decide(p, now, idle)
		switch {
		case next.Relayed && !p.path.Relayed && next.Why == whyUnanswered:
			p.fell = true
		case !next.Relayed:
			p.fell = false
		}
		if next != p.path {
			p.path = next
			changed = append(changed, k)
		}
	}
	return changed
}

// Path is how k is reached; false if k is not a peer.
func (m *Machine) Path(k key.Public) (Path, bool) {
	p := m.peers[k]
	if p == nil {
		return Path{}, false
	}
	return p.path, true
}

// Paths is every peer's path.
func (m *Machine) Paths() map[key.Public]Path {
	out := make(map[key.Public]Path, len(m.peers))
	for k, p := range m.peers {
		out[k] = p.path
	}
	return out
}

// busy is the set of peers that are not idle at now: those that carried
// data within idleAfter (or appeared within it), those we depend on unless
// we are public, and the relays of those.
func (m *Machine) busy(now time.Time) map[key.Public]bool {
	busy := make(map[key.Public]bool, len(m.peers))
	for k, p := range m.peers {
		if m.idleAfter == 0 || (p.in.DependsOn && !m.public) || now.Sub(p.added) < m.idleAfter ||
			(!p.active.IsZero() && now.Sub(p.active) < m.idleAfter) {
			busy[k] = true
		}
	}
	for k, p := range m.peers {
		if busy[k] && !p.in.Via.IsZero() {
			if _, ok := m.peers[p.in.Via]; ok {
				busy[p.in.Via] = true
			}
		}
	}
	return busy
}

// decide is the rule of the package comment.
func (m *Machine) decide(p *peer, now time.Time, idle bool) Path {
	next := Path{Via: p.in.Via, Keepalive: KeepaliveFor(m.public, p.in.DependsOn)}
	switch {
	case p.learned.IsValid() && (!p.ice.IsValid() || !p.learnedAt.Before(p.iceAt)):
		next.Endpoint, next.From = p.learned, SourceTraffic
	case p.ice.IsValid():
		next.Endpoint, next.From = p.ice, SourceICE
	case p.in.Reflexive.IsValid():
		next.Endpoint, next.From = p.in.Reflexive, SourceReflexive
	case p.in.Gossip.IsValid():
		next.Endpoint, next.From = p.in.Gossip, SourceGossip
	}
	fresh := p.lastReply.Before(p.since) // no direct reply since the peer appeared or woke
	switch {
	case p.in.Via.IsZero():
		next.Why = "no relay: always direct"
	case !next.Endpoint.IsValid():
		next.Relayed, next.Why = true, "no endpoint known"
	case idle && next.From != SourceGossip:
		next.Relayed, next.Why = true, "idle: parked on the relay (the NAT mapping may expire)"
	case idle:
		next.Relayed, next.Why = p.path.Relayed, "idle: path kept as it was"
	case !fresh && now.Sub(p.lastReply) < DeadAfter && p.fell && p.path.Relayed && p.lastReply.Sub(p.upSince) < SteadyFor:
		next.Relayed, next.Why = true, whyNotSteady
	case !fresh && now.Sub(p.lastReply) < DeadAfter:
		next.Why = "direct probes answered"
		if p.fell && p.path.Relayed {
			next.Why = whySteady
		}
	case fresh && now.Sub(p.since) < DeadAfter:
		next.Relayed = p.path.Relayed
		switch {
		case p.since != p.added:
			next.Why = "woken: path kept until probes tell"
		case next.Relayed:
			next.Why = "first guess: gossip routes through the relay"
		default:
			next.Why = "first guess: gossip's route is direct"
		}
	case !p.path.Relayed && !p.lastRelay.After(p.lastReply):
		next.Why = whyNeither
	default:
		next.Relayed, next.Why = true, whyUnanswered
	}
	next.PeerRelays = p.saysRelayed.After(p.saysDirect)
	hold, opener, why := m.hold(p, now)
	if hold && !idle {
		next.Hold = true
		if next.Relayed {
			next.Why = why
		}
	}
	// Our turn, and our direct datagrams reach the peer's NAT mapping.
	next.Opening = opener && !hold && !idle && next.Endpoint.IsValid() && next.From != SourceGossip
	if idle {
		next.Idle, next.Keepalive = true, KeepaliveOff
		return next
	}
	// No keepalive (so no handshake started unasked) before the path in
	// use has answered a probe since the peer appeared or woke.
	if answered := (!next.Relayed && !fresh) || (next.Relayed && !p.lastRelay.Before(p.since)); !answered {
		next.Keepalive = KeepaliveOff
	}
	return next
}

// The words of the hysteresis rules (Path.Why).
var (
	whyUnanswered = "direct probes unanswered for " + DeadAfter.String()
	whyNeither    = "direct probes unanswered for " + DeadAfter.String() + ", but the relay answers none either: kept direct"
	whyNotSteady  = "direct probes answered again, not yet steadily for " + SteadyFor.String()
	whySteady     = "direct probes answered steadily for " + SteadyFor.String()
)

// Opening a pair of NATed peers (issue 12). Two peers that are both behind
// NATs and hold no control connection to each other (gossip routes them
// through a relay) take turns: a stock Linux masquerade router takes the
// first datagram that reaches it from a peer before its own host sent
// there as unsolicited, and that unreplied conntrack entry holds the very
// tuple its host's flow towards the peer needs, so the flow leaves from a
// random other port the peer's NAT drops. Whichever NAT is the stock one,
// its host must send first. Neither side can tell, so:
//
//   - attempt 1: the side with the larger key (ICE's controlled side)
//     sends at once; the other holds off (no direct probes, no ICE) until
//     the opener says that its datagrams now go to our NAT mapping (a flag
//     in its relayed probes, Path.Opening: until it learns our mapping,
//     from our advertised reflexive address or ICE, it sends to gossip's
//     guess of our listen port, which reaches nobody), at least OpenLead;
//     then its ICE session starts. Without that, the holder's fixed lead
//     could run out before the opener knew where to send, and a holder
//     sending first to a stock router spoils it (TestNAT: a stock opener
//     still probing the ideal peer's gossip guess when the ideal holder,
//     its lead over, sent to the stock host's mapping);
//   - a holder whose NAT takes the opener's datagrams in (the opener's
//     probe to its mapping drew ICMP port unreachable from it, and the
//     opener said so: NATTakesIn) keeps quiet for the whole of that turn: the
//     opener's first datagram already holds the tuple its flow would need,
//     and sending would only give its later flows a random port, spoiling
//     its own turn (stock masquerade: Linux gives a source's new flows the
//     port of its newest mapping);
//   - an attempt with no direct probe answered within OpenFor failed: both
//     sides hold off for QuietFor, longer than the 30 s an unreplied UDP
//     entry lives in Linux conntrack (nf_conntrack_udp_timeout), so every
//     entry the attempt left in either router expires;
//   - then attempt 2 with the roles swapped, and so on, alternating.
//
// A direct probe answered ends the turns for good. Both sides count from
// when each learned of the other, which gossip makes within a second or
// two of each other in the worst case and well within a second in the test
// bed; the holder waits for the opener's word rather than for a fixed
// lead, so that skew, and the opener learning the holder's mapping late,
// cost only time. A public host takes no turns
// (its address has no NAT to spoil), nor does a pair that holds a control
// connection (one side dialled the other, so it is reachable).
//
// QuietFor leaves ten seconds over the 30 s: an attempt's last datagrams
// leave up to a couple of seconds after it ends (the ICE agent closes on
// the next tick of the NAT manager), and the two sides' clocks start a
// second or two apart.
const (
	OpenLead = 1500 * time.Millisecond
	OpenFor  = 12 * time.Second
	QuietFor = 40 * time.Second
)

// hold reports whether we must send p nothing straight at now, whether
// this is our turn to send first, and why we hold.
func (m *Machine) hold(p *peer, now time.Time) (hold, opener bool, why string) {
	if m.public || p.opened || !p.in.StartRelayed || p.in.Via.IsZero() {
		return false, false, ""
	}
	el := now.Sub(p.since)
	if el < 0 {
		return false, false, ""
	}
	cycle := OpenFor + QuietFor
	attempt := int(el / cycle)
	in := el % cycle
	if in >= OpenFor {
		return true, false, fmt.Sprintf("opening attempt %d got no direct reply: quiet for %v so both NATs forget it", attempt+1, QuietFor)
	}
	larger := p.in.Key.Less(m.self)
	if larger == (attempt%2 == 0) {
		return false, true, ""
	}
	// The peer's turn. If our NAT takes unsolicited datagrams in, the
	// peer's first datagram already took the tuple our flow would need:
	// keep quiet the whole attempt (sending would only give our later
	// flows a random port); our turn comes next.
	if !p.takesIn.IsZero() && now.Sub(p.takesIn) < TakesInFor {
		return true, false, fmt.Sprintf("opening attempt %d: the peer sends first, and our NAT takes its datagrams in (ICMP port unreachable): waiting for our turn", attempt+1)
	}
	// Else hold off until it told us, in this attempt, that it sends to
	// our mapping, and for OpenLead at least.
	start := now.Add(-in)
	if in < OpenLead || p.peerOpening.Before(start) {
		return true, false, fmt.Sprintf("opening attempt %d: the peer sends first", attempt+1)
	}
	return false, false, ""
}

// KeepaliveFor is which side of a pair sends WireGuard keepalives (and so
// starts handshakes unasked).
//
// The side behind a NAT must: its NAT drops what the other side sends until
// it has sent first, and its mapping lasts only while it keeps sending. So
// a host not known to be public keeps alive the peers it depends on (its
// control neighbours and relays) whatever the key order. A public host sends
// none: the other side does, and its probes and handshakes teach us its
// mapping. Between two peers that depend on neither (two NATed peers,
// normally relayed) the smaller key does, so that their first handshakes do
// not collide.
func KeepaliveFor(public, dependsOn bool) Keepalive {
	switch {
	case public:
		return KeepaliveOff
	case dependsOn:
		return KeepaliveOn
	}
	return KeepaliveByKey
}

func unmap(a netip.AddrPort) netip.AddrPort {
	if !a.IsValid() {
		return a
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
