package reach

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func testKey(n byte) key.Public {
	var k key.Public
	k[0] = n
	return k
}

var (
	self   = testKey(5)
	peerA  = testKey(1) // reached through relay R when its direct path dies
	relayR = testKey(2)
	gossA  = netip.MustParseAddrPort("192.0.2.101:6783")
	gossR  = netip.MustParseAddrPort("192.0.2.2:6783")
	natA   = netip.MustParseAddrPort("192.0.2.101:49601")
	iceA   = netip.MustParseAddrPort("192.0.2.101:50000")
	t0     = time.Unix(1000, 0)
)

// step is one event fed to the Machine at t0+at, and what A's path must be
// after it.
type step struct {
	at    time.Duration
	do    func(m *Machine, now time.Time)
	want  Path
	quiet bool // the event changes nothing
}

func peers(startRelayed bool, gossip netip.AddrPort) func(m *Machine, now time.Time) {
	return func(m *Machine, now time.Time) {
		m.SetPeers(now, []Peer{
			{Key: peerA, Gossip: gossip, Via: relayR, StartRelayed: startRelayed},
			{Key: relayR, Gossip: gossR, DependsOn: true},
		})
	}
}

func reply(m *Machine, now time.Time)      { m.DirectReply(now, peerA) }
func relayReply(m *Machine, now time.Time) { m.RelayReply(now, peerA) }
func learned(a netip.AddrPort) func(*Machine, time.Time) {
	return func(m *Machine, now time.Time) { m.Learned(now, peerA, a) }
}
func ice(a netip.AddrPort) func(*Machine, time.Time) {
	return func(m *Machine, now time.Time) { m.ICE(now, peerA, a) }
}
func tick(*Machine, time.Time) {}

// TestMachine walks peer A through its life on a fake clock: first guess,
// probes answered and silent, endpoints from ICE and from traffic, gossip
// moving it.
func TestMachine(t *testing.T) {
	direct := func(ep netip.AddrPort, from Source, why string) Path {
		return Path{Endpoint: ep, From: from, Via: relayR, Why: why}
	}
	relayed := func(ep netip.AddrPort, from Source, why string) Path {
		return Path{Endpoint: ep, From: from, Relayed: true, Via: relayR, Why: why}
	}
	// We hold the larger key: our turn to open first, and once we know
	// A's NAT mapping (not gossip's guess) our probes say so.
	opening := func(p Path) Path { p.Opening = true; return p }
	tests := []struct {
		name  string
		steps []step
	}{
		{"first guess relayed, then probes answer", []step{
			{0, peers(true, gossA), relayed(gossA, SourceGossip, "first guess: gossip routes through the relay"), false},
			{4 * time.Second, tick, relayed(gossA, SourceGossip, "first guess: gossip routes through the relay"), true},
			{4500 * time.Millisecond, reply, direct(gossA, SourceGossip, "direct probes answered"), false},
			{9 * time.Second, relayReply, direct(gossA, SourceGossip, "direct probes answered"), true},
			{9500 * time.Millisecond, tick, relayed(gossA, SourceGossip, "direct probes unanswered for 5s"), false},
		}},
		{"first guess direct, never answered", []step{
			{0, peers(false, gossA), direct(gossA, SourceGossip, "first guess: gossip's route is direct"), false},
			{time.Second, relayReply, direct(gossA, SourceGossip, "first guess: gossip's route is direct"), true},
			{5 * time.Second, tick, relayed(gossA, SourceGossip, "direct probes unanswered for 5s"), false},
		}},
		// A starved host answers late and in bunches, on every path: a gap
		// in direct replies while the relay answers nothing newer either
		// moves nothing.
		{"direct replies stop while the relay's stop too: kept direct", []step{
			{0, peers(false, gossA), direct(gossA, SourceGossip, "first guess: gossip's route is direct"), false},
			{time.Second, reply, direct(gossA, SourceGossip, "direct probes answered"), false},
			{1200 * time.Millisecond, relayReply, direct(gossA, SourceGossip, "direct probes answered"), true},
			{2 * time.Second, reply, direct(gossA, SourceGossip, "direct probes answered"), true},
			{9 * time.Second, tick, direct(gossA, SourceGossip, "direct probes unanswered for 5s, but the relay answers none either: kept direct"), false},
			{20 * time.Second, reply, direct(gossA, SourceGossip, "direct probes answered"), false},
			// The relay answers after the direct path fell silent: relayed.
			{26 * time.Second, relayReply, relayed(gossA, SourceGossip, "direct probes unanswered for 5s"), false},
		}},
		// A starved host reads its answers in bunches: a relayed answer
		// read after the last direct one, to a probe sent before it came,
		// says nothing of the paths.
		{"a relayed answer to a probe sent before the last direct answer moves nothing", []step{
			{0, peers(false, gossA), direct(gossA, SourceGossip, "first guess: gossip's route is direct"), false},
			{time.Second, reply, direct(gossA, SourceGossip, "direct probes answered"), false},
			{7 * time.Second, func(m *Machine, now time.Time) { m.RelayReply(t0.Add(500*time.Millisecond), peerA) },
				direct(gossA, SourceGossip, "direct probes unanswered for 5s, but the relay answers none either: kept direct"), false},
			{8 * time.Second, func(m *Machine, now time.Time) { m.RelayReply(t0.Add(1500*time.Millisecond), peerA) },
				relayed(gossA, SourceGossip, "direct probes unanswered for 5s"), false},
		}},
		// A pair that fell to its relay goes back only when the direct
		// path answers without gaps for SteadyFor, not on one late reply.
		{"fell to the relay: back direct only when steady", []step{
			{0, peers(false, gossA), direct(gossA, SourceGossip, "first guess: gossip's route is direct"), false},
			{time.Second, reply, direct(gossA, SourceGossip, "direct probes answered"), false},
			{3 * time.Second, relayReply, direct(gossA, SourceGossip, "direct probes answered"), true},
			{6 * time.Second, tick, relayed(gossA, SourceGossip, "direct probes unanswered for 5s"), false},
			{10 * time.Second, reply, relayed(gossA, SourceGossip, "direct probes answered again, not yet steadily for 3s"), false},
			{11 * time.Second, reply, relayed(gossA, SourceGossip, "direct probes answered again, not yet steadily for 3s"), true},
			// two probes lost: the run starts again
			{14 * time.Second, reply, relayed(gossA, SourceGossip, "direct probes answered again, not yet steadily for 3s"), true},
			{15 * time.Second, reply, relayed(gossA, SourceGossip, "direct probes answered again, not yet steadily for 3s"), true},
			{16 * time.Second, reply, relayed(gossA, SourceGossip, "direct probes answered again, not yet steadily for 3s"), true},
			{17 * time.Second, reply, direct(gossA, SourceGossip, "direct probes answered steadily for 3s"), false},
			{18 * time.Second, reply, direct(gossA, SourceGossip, "direct probes answered"), false},
		}},
		{"the advertised reflexive address before gossip's guess; traffic after it", []step{
			{0, func(m *Machine, now time.Time) {
				m.SetPeers(now, []Peer{{Key: peerA, Gossip: gossA, Reflexive: natA, Via: relayR, StartRelayed: true}, {Key: relayR, Gossip: gossR}})
			}, opening(relayed(natA, SourceReflexive, "first guess: gossip routes through the relay")), false},
			{time.Second, learned(iceA), opening(relayed(iceA, SourceTraffic, "first guess: gossip routes through the relay")), false},
		}},
		{"no endpoint: relayed", []step{
			{0, peers(false, netip.AddrPort{}), relayed(netip.AddrPort{}, SourceNone, "no endpoint known"), false},
		}},
		{"the NAT's port learned from traffic wins over gossip's guess", []step{
			{0, peers(true, gossA), relayed(gossA, SourceGossip, "first guess: gossip routes through the relay"), false},
			{time.Second, learned(natA), opening(relayed(natA, SourceTraffic, "first guess: gossip routes through the relay")), false},
			{1100 * time.Millisecond, reply, direct(natA, SourceTraffic, "direct probes answered"), false},
			// gossip says the same again: nothing forgotten
			{2 * time.Second, peers(true, gossA), direct(natA, SourceTraffic, "direct probes answered"), true},
		}},
		// A roamed peer (its NAT's WAN address moved): its probes show the
		// new mapping first, then its control connection comes back from
		// there and gossip follows. The stale reflexive address it
		// advertised must not win meanwhile.
		{"gossip follows traffic to a new address: traffic kept", []step{
			{0, func(m *Machine, now time.Time) {
				m.SetPeers(now, []Peer{{Key: peerA, Gossip: gossA, Reflexive: natA}, {Key: relayR, Gossip: gossR}})
			}, Path{Endpoint: natA, From: SourceReflexive, Why: "no relay: always direct"}, false},
			{time.Second, learned(netip.MustParseAddrPort("192.0.2.106:49601")), Path{Endpoint: netip.MustParseAddrPort("192.0.2.106:49601"), From: SourceTraffic, Why: "no relay: always direct"}, false},
			{2 * time.Second, func(m *Machine, now time.Time) {
				m.SetPeers(now, []Peer{{Key: peerA, Gossip: netip.MustParseAddrPort("192.0.2.106:6783"), Reflexive: natA}, {Key: relayR, Gossip: gossR}})
			}, Path{Endpoint: netip.MustParseAddrPort("192.0.2.106:49601"), From: SourceTraffic, Why: "no relay: always direct"}, true},
		}},
		{"newest of ICE and traffic wins; new gossip address forgets both", []step{
			{0, peers(true, gossA), relayed(gossA, SourceGossip, "first guess: gossip routes through the relay"), false},
			{time.Second, ice(iceA), opening(relayed(iceA, SourceICE, "first guess: gossip routes through the relay")), false},
			{2 * time.Second, learned(natA), opening(relayed(natA, SourceTraffic, "first guess: gossip routes through the relay")), false},
			{3 * time.Second, ice(iceA), opening(relayed(iceA, SourceICE, "first guess: gossip routes through the relay")), false},
			{4 * time.Second, peers(true, netip.MustParseAddrPort("192.0.2.77:6783")), relayed(netip.MustParseAddrPort("192.0.2.77:6783"), SourceGossip, "first guess: gossip routes through the relay"), false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(self)
			for i, s := range tt.steps {
				now := t0.Add(s.at)
				s.do(m, now)
				changed := m.Tick(now)
				got, ok := m.Path(peerA)
				if !ok {
					t.Fatalf("step %d: A is not a peer", i)
				}
				got.Keepalive = 0
				if got != s.want {
					t.Errorf("step %d at %v: path %+v, want %+v", i, s.at, got, s.want)
				}
				if s.quiet && len(changed) != 0 {
					t.Errorf("step %d: %d paths changed, want none", i, len(changed))
				}
			}
		})
	}
}

// TestNoRelayAlwaysDirect: a peer without a relay stays direct however
// silent it is.
func TestNoRelayAlwaysDirect(t *testing.T) {
	m := New(self)
	m.SetPeers(t0, []Peer{{Key: relayR, Gossip: gossR}})
	m.Tick(t0.Add(time.Hour))
	if p, _ := m.Path(relayR); p.Relayed || p.Why != "no relay: always direct" {
		t.Errorf("path %+v", p)
	}
	// Departed peers are forgotten; events for them change nothing.
	m.SetPeers(t0, nil)
	m.Learned(t0, relayR, natA)
	if _, ok := m.Path(relayR); ok {
		t.Errorf("departed peer still has a path")
	}
}

// TestKeepaliveFor: the NATed (or unsure) side keeps alive the peers it
// depends on whatever the key order; a public side none; two independent
// peers leave it to key order.
func TestKeepaliveFor(t *testing.T) {
	tests := []struct {
		name              string
		public, dependsOn bool
		want              Keepalive
	}{
		{"NATed or unsure, towards a peer it depends on", false, true, KeepaliveOn},
		{"NATed or unsure, towards an independent peer", false, false, KeepaliveByKey},
		{"public, towards a peer it depends on", true, true, KeepaliveOff},
		{"public, towards an independent peer", true, false, KeepaliveOff},
	}
	for _, tt := range tests {
		if got := KeepaliveFor(tt.public, tt.dependsOn); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	m := New(self)
	m.SetPeers(t0, []Peer{{Key: relayR, Gossip: gossR, DependsOn: true}})
	if p, _ := m.Path(relayR); p.Keepalive != KeepaliveOff {
		t.Errorf("keepalive %v before any probe was answered, want none", p.Keepalive)
	}
	m.DirectReply(t0, relayR)
	m.Tick(t0)
	if p, _ := m.Path(relayR); p.Keepalive != KeepaliveOn {
		t.Errorf("unsure host: keepalive %v towards the peer it depends on", p.Keepalive)
	}
	m.SetPublic(true)
	if ch := m.Tick(t0); len(ch) != 1 {
		t.Errorf("becoming public changed %d paths, want 1", len(ch))
	}
	if p, _ := m.Path(relayR); p.Keepalive != KeepaliveOff {
		t.Errorf("public host: keepalive %v", p.Keepalive)
	}
}

// TestRelays: gossip's first hop is the relay (start relayed); for a direct
// route, the smallest-keyed common control neighbour.
func TestRelays(t *testing.T) {
	me, a, b, c, d := testKey(9), testKey(1), testKey(2), testKey(3), testKey(4)
	routes := []Route{
		{Key: me, Self: true, Reachable: true},
		{Key: a, Reachable: true, Direct: true, HasEndpoint: true, NextHop: a, Neighbors: []key.Public{me, c, d}},
		{Key: b, Reachable: true, Direct: true, HasEndpoint: true, NextHop: b, Neighbors: []key.Public{me, c}},
		{Key: c, Reachable: true, NextHop: c},
		{Key: d, Reachable: true, NextHop: b},
		{Key: testKey(7), Reachable: false, NextHop: a},
	}
	got := Relays(routes)
	want := map[key.Public]Relay{c: {Via: a}, d: {Via: b, StartRelayed: true}}
	if len(got) != len(want) {
		t.Fatalf("relays %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("relay of %d: %+v, want %+v", k[0], got[k], w)
		}
	}
}

// TestPeerRelays: the peer's newest probe says whether it relays to us;
// our own path is not changed by it.
func TestPeerRelays(t *testing.T) {
	m := New(self)
	m.SetPeers(t0, []Peer{{Key: peerA, Gossip: gossA, Via: relayR}, {Key: relayR, Gossip: gossR}})
	m.DirectReply(t0.Add(time.Second), peerA)
	for _, s := range []struct {
		at      time.Duration
		relayed bool
		want    bool
	}{
		{time.Second, true, true},
		{2 * time.Second, false, false},
		{1500 * time.Millisecond, true, false}, // older than the newest word
		{3 * time.Second, true, true},
	} {
		m.PeerSays(t0.Add(s.at), peerA, s.relayed)
		m.Tick(t0.Add(3 * time.Second))
		p, _ := m.Path(peerA)
		if p.PeerRelays != s.want || p.Relayed {
			t.Errorf("peer said relayed=%v at %v: %+v; want PeerRelays %v, direct", s.relayed, s.at, p, s.want)
		}
	}
}

// TestIdle walks a pair through going quiet and waking: probes paused and
// keepalives off while idle, a gossip-addressed path kept, a NAT-learned one
// parked on the relay, and on the first data the frozen path kept until
// probes tell.
func TestIdle(t *testing.T) {
	const idle = 30 * time.Second
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	path := func(m *Machine) Path { p, _ := m.Path(peerA); return p }

	t.Run("gossip address: kept direct, woken direct", func(t *testing.T) {
		m := New(self)
		m.SetIdleAfter(idle)
		m.SetPeers(at(0), []Peer{{Key: peerA, Gossip: gossA, Via: relayR}, {Key: relayR, Gossip: gossR}})
		m.DirectReply(at(time.Second), peerA)
		m.Active(at(10*time.Second), peerA)
		m.DirectReply(at(39*time.Second), peerA)
		m.Tick(at(39 * time.Second))
		if p := path(m); p.Idle || p.Relayed {
			t.Fatalf("active pair: %+v", p)
		}
		m.Tick(at(40 * time.Second)) // 30 s after the last data
		p := path(m)
		if !p.Idle || p.Relayed || p.Keepalive != KeepaliveOff || p.Why != "idle: path kept as it was" {
			t.Fatalf("idle pair: %+v", p)
		}
		// Its relay carries nothing for it and goes idle too.
		if r, _ := m.Path(relayR); !r.Idle {
			t.Errorf("relay of an idle pair not idle: %+v", r)
		}
		// Silence for an hour changes nothing: no probes, no verdict.
		if ch := m.Tick(at(time.Hour)); len(ch) != 0 {
			t.Errorf("an idle hour changed %d paths", len(ch))
		}
		m.Active(at(time.Hour), peerA)
		m.Tick(at(time.Hour))
		p = path(m)
		if p.Idle || p.Relayed || p.Why != "woken: path kept until probes tell" {
			t.Fatalf("woken pair: %+v", p)
		}
		if r, _ := m.Path(relayR); r.Idle {
			t.Errorf("relay of a woken pair still idle: %+v", r)
		}
		// The last reply was an hour ago: it does not count, and no
		// keepalive starts before a fresh one.
		if p.Keepalive != KeepaliveOff {
			t.Errorf("keepalive %v before a fresh reply", p.Keepalive)
		}
		m.DirectReply(at(time.Hour+time.Second), peerA)
		m.Tick(at(time.Hour + time.Second))
		if p = path(m); p.Relayed || p.Why != "direct probes answered" {
			t.Errorf("answered after waking: %+v", p)
		}
		// Woken but unanswered for DeadAfter while the relay answers:
		// relayed, as a new peer is.
		m.RelayReply(at(time.Hour+6*time.Second), peerA)
		m.Tick(at(time.Hour + 7*time.Second))
		if p = path(m); !p.Relayed {
			t.Errorf("unanswered after waking: %+v", p)
		}
	})

	t.Run("NAT-learned address: parked on the relay, direct again when probes answer", func(t *testing.T) {
		m := New(self)
		m.SetIdleAfter(idle)
		m.SetPeers(at(0), []Peer{{Key: peerA, Gossip: gossA, Via: relayR}, {Key: relayR, Gossip: gossR}})
		m.Learned(at(time.Second), peerA, natA)
		m.DirectReply(at(time.Second), peerA)
		m.Tick(at(time.Second))
		if p := path(m); p.Relayed || p.Endpoint != natA {
			t.Fatalf("before idle: %+v", p)
		}
		m.Tick(at(31 * time.Second))
		p := path(m)
		if !p.Idle || !p.Relayed || p.Endpoint != natA {
			t.Fatalf("idle NATed pair not parked: %+v", p)
		}
		m.Active(at(5*time.Minute), peerA)
		m.Tick(at(5 * time.Minute))
		if p = path(m); p.Idle || !p.Relayed {
			t.Fatalf("woken NATed pair must stay on the relay until probes answer: %+v", p)
		}
		m.DirectReply(at(5*time.Minute+100*time.Millisecond), peerA)
		m.Tick(at(5*time.Minute + 100*time.Millisecond))
		if p = path(m); p.Relayed {
			t.Errorf("answered: %+v", p)
		}
	})

	t.Run("never idle: peers we depend on, relays of busy pairs, idleAfter 0", func(t *testing.T) {
		m := New(self)
		m.SetIdleAfter(idle)
		m.SetPeers(at(0), []Peer{{Key: peerA, Gossip: gossA, Via: relayR}, {Key: relayR, Gossip: gossR, DependsOn: true}})
		m.Tick(at(time.Hour))
		if r, _ := m.Path(relayR); r.Idle {
			t.Errorf("a peer we depend on went idle: %+v", r)
		}
		m2 := New(self)
		m2.SetIdleAfter(idle)
		m2.SetPeers(at(0), []Peer{{Key: peerA, Gossip: gossA, Via: relayR}, {Key: relayR, Gossip: gossR}})
		m2.Active(at(time.Hour), peerA)
		m2.Tick(at(time.Hour))
		if r, _ := m2.Path(relayR); r.Idle {
			t.Errorf("the relay of a busy pair went idle: %+v", r)
		}
		m3 := New(self)
		m3.SetIdleAfter(0)
		m3.SetPeers(at(0), []Peer{{Key: peerA, Gossip: gossA, Via: relayR}, {Key: relayR, Gossip: gossR}})
		m3.Tick(at(time.Hour))
		if p, _ := m3.Path(peerA); p.Idle {
			t.Errorf("idleAfter 0: pair idle: %+v", p)
		}
	})
}

// TestIdlePublicHostDependsOnNobody: a public host holds no NAT mapping, so
// the peers it would depend on go idle like any other.
func TestIdlePublicHostDependsOnNobody(t *testing.T) {
	m := New(self)
	m.SetIdleAfter(30 * time.Second)
	m.SetPublic(true)
	m.SetPeers(t0, []Peer{{Key: relayR, Gossip: gossR, DependsOn: true}})
	m.Tick(t0.Add(time.Minute))
	if p, _ := m.Path(relayR); !p.Idle {
		t.Errorf("public host: neighbour not idle: %+v", p)
	}
	m.SetPublic(false)
	m.Tick(t0.Add(time.Minute))
	if p, _ := m.Path(relayR); p.Idle {
		t.Errorf("NATed or unsure host: neighbour idle: %+v", p)
	}
}

// TestOpeningTurns: two NATed peers that gossip routes through a relay take
// turns sending first, with a quiet spell between attempts long enough for
// Linux conntrack to forget the unreplied entries of the last one; the
// larger key opens the first attempt; a direct reply ends the turns; a
// public host and a pair that holds a control connection take none.
func TestOpeningTurns(t *testing.T) {
	small, large := testKey(1), testKey(9) // self is testKey(5)
	var none key.Public
	held := func(m *Machine, k key.Public, at time.Duration) bool {
		m.Tick(t0.Add(at))
		p, _ := m.Path(k)
		if p.Hold && p.Relayed && p.Why == "" {
			t.Errorf("held without a why: %+v", p)
		}
		return p.Hold
	}
	m := New(self)
	m.SetIdleAfter(0)
	m.SetPeers(t0, []Peer{
		{Key: small, Gossip: gossA, Via: relayR, StartRelayed: true},
		{Key: large, Gossip: gossA, Via: relayR, StartRelayed: true},
		{Key: relayR, Gossip: gossR, DependsOn: true},
	})
	cycle := OpenFor + QuietFor
	for _, c := range []struct {
		at          time.Duration
		signal      key.Public // this peer's probe says it opens, just before at
		small, larg bool       // held towards small (we are the larger key) and towards large
	}{
		{0, none, false, true}, // attempt 1: the larger key sends first
		{OpenLead - time.Millisecond, none, false, true},
		{OpenLead, none, false, true},          // still: it has not said it sends to our mapping
		{2 * time.Second, large, false, false}, // it has: then both
		{OpenFor - time.Millisecond, none, false, false},
		{OpenFor, none, true, true}, // quiet
		{cycle - time.Millisecond, none, true, true},
		{cycle, none, true, false}, // attempt 2: roles swapped; attempt 1's word does not count
		{cycle + OpenLead, none, true, false},
		{cycle + OpenLead + time.Second, small, false, false},
		{2 * cycle, none, false, true}, // attempt 3 as attempt 1
	} {
		if !c.signal.IsZero() {
			m.PeerOpening(t0.Add(c.at-time.Millisecond), c.signal)
		}
		if got := held(m, small, c.at); got != c.small {
			t.Errorf("at %v: held towards the smaller key %v, want %v", c.at, got, c.small)
		}
		if got := held(m, large, c.at); got != c.larg {
			t.Errorf("at %v: held towards the larger key %v, want %v", c.at, got, c.larg)
		}
	}
	if p, _ := m.Path(relayR); p.Hold {
		t.Errorf("a control neighbour is held: %+v", p)
	}
	// A direct reply ends the turns for good.
	m.DirectReply(t0.Add(2*cycle+time.Second), large)
	if held(m, large, 2*cycle+OpenFor+time.Second) {
		t.Error("held after a direct reply")
	}
	// A public host holds off nobody.
	pub := New(self)
	pub.SetIdleAfter(0)
	pub.SetPublic(true)
	pub.SetPeers(t0, []Peer{{Key: large, Gossip: gossA, Via: relayR, StartRelayed: true}, {Key: relayR, Gossip: gossR}})
	if held(pub, large, OpenFor) {
		t.Error("a public host held off a peer")
	}
}

// TestOpeningSays: in our turn we tell the peer we open (Path.Opening) once
// our direct datagrams go to its NAT mapping, not before (gossip's guess of
// its listen port reaches nobody behind a NAT), and never in its turn, in
// the quiet, or once a direct probe answered.
func TestOpeningSays(t *testing.T) {
	small, large := testKey(1), testKey(9) // self is testKey(5): we open to small first
	m := New(self)
	m.SetIdleAfter(0)
	set := func(refl netip.AddrPort) {
		m.SetPeers(t0, []Peer{
			{Key: small, Gossip: gossA, Reflexive: refl, Via: relayR, StartRelayed: true},
			{Key: large, Gossip: gossA, Reflexive: refl, Via: relayR, StartRelayed: true},
			{Key: relayR, Gossip: gossR, DependsOn: true},
		})
	}
	opening := func(k key.Public, at time.Duration) bool {
		m.Tick(t0.Add(at))
		p, _ := m.Path(k)
		return p.Opening
	}
	set(netip.AddrPort{})
	if opening(small, 0) {
		t.Error("says it opens while sending to gossip's guess")
	}
	set(natA)
	if !opening(small, time.Second) {
		t.Error("our turn, sending to the peer's mapping: does not say so")
	}
	if opening(large, time.Second) {
		t.Error("says it opens in the peer's turn")
	}
	if opening(small, OpenFor) {
		t.Error("says it opens in the quiet")
	}
	m.DirectReply(t0.Add(OpenFor+QuietFor+time.Second), small)
	if opening(small, 2*(OpenFor+QuietFor)) {
		t.Error("says it opens after a direct reply")
	}
}

// TestQuietWhenNATTakesIn: told by a peer that our NAT took its datagrams
// in, we keep quiet for the whole of its turn (its word does not end it),
// and still open in ours.
func TestQuietWhenNATTakesIn(t *testing.T) {
	small, large := testKey(1), testKey(9) // self is testKey(5)
	m := New(self)
	m.SetIdleAfter(0)
	m.SetPeers(t0, []Peer{
		{Key: small, Gossip: gossA, Reflexive: natA, Via: relayR, StartRelayed: true},
		{Key: large, Gossip: gossA, Reflexive: natA, Via: relayR, StartRelayed: true},
		{Key: relayR, Gossip: gossR, DependsOn: true},
	})
	m.NATTakesIn(t0.Add(time.Second), large)
	m.PeerOpening(t0.Add(2*time.Second), large)
	m.Tick(t0.Add(3 * time.Second))
	if p, _ := m.Path(large); !p.Hold {
		t.Errorf("in the peer's turn, after its word: not held (%+v)", p)
	}
	if p, _ := m.Path(small); p.Hold || !p.Opening {
		t.Errorf("in our turn: %+v, want sending and saying so", p)
	}
}
