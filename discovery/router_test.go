package discovery

import (
	"errors"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func TestTwoRoutersConnect(t *testing.T) {
	a := newTestRouter(t, "a", withHostIP(netip.MustParseAddr("10.32.0.1")))
	b := newTestRouter(t, "b", withHostIP(netip.MustParseAddr("10.32.0.2")))
	if err := a.Connect(b.addr()); err != nil {
		t.Fatal(err)
	}
	bPort := uint16(b.Addr().(interface{ AddrPort() netip.AddrPort }).AddrPort().Port())
	waitFor(t, 5*time.Second, "a and b reachable with endpoints", func() bool {
		pb, ok1 := a.peer(b.Self())
		pa, ok2 := b.peer(a.Self())
		return ok1 && ok2 && pb.Reachable && pa.Reachable && pb.Direct && pa.Direct &&
			pb.Endpoint.IsValid() && pa.Endpoint.IsValid()
	})
	pb, _ := a.peer(b.Self())
	if pb.Endpoint != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), bPort) {
		t.Errorf("a sees b at %v, want 127.0.0.1:%d", pb.Endpoint, bPort)
	}
	if pb.Nickname != "b" || pb.HostIP != netip.MustParseAddr("10.32.0.2") || pb.Port != bPort {
		t.Errorf("a's view of b = %+v", pb)
	}
	if !slices.Contains(pb.Neighbors, a.Self()) {
		t.Errorf("b's neighbors %v lack a", pb.Neighbors)
	}
	if hop, ok := a.NextHop(b.Self()); !ok || hop != b.Self() {
		t.Errorf("NextHop(b) = %v, %v", hop, ok)
	}
	if ps := a.Peers(); !ps[0].Self || ps[0].Key != a.Self() {
		t.Errorf("Peers()[0] is not self: %+v", ps[0])
	}
	cs := a.Connections()
	if len(cs) != 1 || cs[0].State != StateEstablished || cs[0].Peer != b.Self() || !cs[0].Outbound || cs[0].Addr != b.addr() || cs[0].Nickname != "b" {
		t.Errorf("a's connections:\n%s", connStates(a))
	}
	cs = b.Connections()
	if len(cs) != 1 || cs[0].State != StateEstablished || cs[0].Peer != a.Self() || cs[0].Outbound {
		t.Errorf("b's connections:\n%s", connStates(b))
	}
	c := a.Counters()
	if c[CtrEstablished] != 1 || c[CtrRecordsApplied] == 0 || c[CtrHandshakeFailed] != 0 {
		t.Errorf("counters: %v", c)
	}
}

func TestLineLearnsThroughMiddle(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	c := newTestRouter(t, "c")
	if err := a.Connect(b.addr()); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(b.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a learns c through b", func() bool {
		p, ok := a.peer(c.Self())
		return ok && p.Reachable && p.Endpoint.IsValid()
	})
	waitFor(t, 10*time.Second, "a and c connect directly", func() bool {
		p, ok := a.peer(c.Self())
		q, ok2 := c.peer(a.Self())
		hop, _ := a.NextHop(c.Self())
		return ok && ok2 && p.Direct && q.Direct && hop == c.Self()
	})
	// The gossip-driven connection shows up as its own ConnState.
	waitFor(t, 5*time.Second, "a lists two connections", func() bool { return len(a.Connections()) == 2 })
}

func TestRelayRouteWithoutDirectConnection(t *testing.T) {
	// a and c advertise a port nobody listens on, so their gossip dials to
	// each other fail and they keep routing through b.
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	c := newTestRouter(t, "c")
	for _, r := range []*testRouter{a, c} {
		r.mu.Lock()
		r.selfRec.Port = 1
		r.port = 1
		r.bumpSelfLocked()
		r.mu.Unlock()
	}
	a.Connect(b.addr())
	c.Connect(b.addr())
	waitFor(t, 5*time.Second, "a reaches c through b", func() bool {
		p, ok := a.peer(c.Self())
		hop, _ := a.NextHop(c.Self())
		return ok && p.Reachable && !p.Direct && hop == b.Self()
	})
	waitFor(t, 5*time.Second, "c reaches a through b", func() bool {
		hop, _ := c.NextHop(a.Self())
		return hop == b.Self()
	})
	if r := a.Route(c.Self()); len(r) != 3 || r[1] != b.Self() {
		t.Errorf("route a→c = %v", r)
	}
	if r := c.Route(a.Self()); len(r) != 3 || r[1] != b.Self() {
		t.Errorf("route c→a = %v", r)
	}
	// Each sees the other at the address b reports, with the advertised port.
	if p, _ := a.peer(c.Self()); p.Endpoint != netip.MustParseAddrPort("127.0.0.1:1") {
		t.Errorf("a sees c at %v", p.Endpoint)
	}
}

func TestWrongSecret(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b", withSecret(key.Secret{9, 9, 9}))
	if err := a.Connect(b.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "several refused attempts", func() bool {
		return a.Counters()[CtrHandshakeRefused] >= 3 && b.Counters()[CtrHandshakeBadSecret] >= 3
	})
	cs := a.Connections()
	if len(cs) != 1 {
		t.Fatalf("connections:\n%s", connStates(a))
	}
	waitFor(t, 2*time.Second, "target failed", func() bool {
		cs := a.Connections()
		return cs[0].State == StateFailed
	})
	cs = a.Connections()
	if !strings.Contains(cs[0].Err, "does not know our network secret") || !cs[0].Peer.IsZero() {
		t.Errorf("target state %+v", cs[0])
	}
	if n := a.logs.count("refused by peer: it does not know our network secret"); n != 1 {
		t.Errorf("dialler logged the refusal %d times, want 1", n)
	}
	if n := b.logs.count("it does not know this network's secret"); n != 1 {
		t.Errorf("responder logged the rejection %d times, want 1", n)
	}
	if len(a.Peers()) != 1 || len(b.Peers()) != 1 {
		t.Errorf("peers learned despite the wrong secret: %v %v", a.Peers(), b.Peers())
	}
	if got := len(b.Connections()); got != 0 {
		t.Errorf("b has %d connections", got)
	}
}

func TestForget(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	if err := a.Connect(b.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "connected", func() bool {
		p, ok := b.peer(a.Self())
		return ok && p.Direct
	})
	if err := a.Forget(b.addr()); err != nil {
		t.Fatal(err)
	}
	if len(a.Connections()) != 0 {
		t.Errorf("connections after Forget:\n%s", connStates(a))
	}
	waitFor(t, 5*time.Second, "b sees the connection closed", func() bool {
		p, ok := b.peer(a.Self())
		return !ok || !p.Direct
	})
	if err := a.Forget(b.addr()); !errors.Is(err, ErrUnknownTarget) {
		t.Errorf("second Forget: %v", err)
	}
}

func TestSetAttachedPropagates(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	c := newTestRouter(t, "c")
	a.Connect(b.addr())
	c.Connect(b.addr())
	waitFor(t, 5*time.Second, "c learns a", func() bool { _, ok := c.peer(a.Self()); return ok })
	want := []netip.Prefix{netip.MustParsePrefix("10.32.0.0/24"), netip.MustParsePrefix("10.33.1.7/32")}
	// Drain so we can see the nudge.
	select {
	case <-c.Changes():
	default:
	}
	a.SetAttached(append(want, netip.Prefix{}))
	waitFor(t, 5*time.Second, "c sees a's prefixes", func() bool {
		p, _ := c.peer(a.Self())
		return slices.Equal(p.Attached, want)
	})
	select {
	case <-c.Changes():
	case <-time.After(time.Second):
		t.Error("Changes was not nudged")
	}
	if p, _ := a.peer(a.Self()); !slices.Equal(p.Attached, want) {
		t.Errorf("self record attached = %v", p.Attached)
	}
}

func TestRestartWithSameKeyWins(t *testing.T) {
	k := newKey(t)
	b := newTestRouter(t, "b")
	a1 := newTestRouter(t, "a-old", withKey(k))
	a1.Connect(b.addr())
	waitFor(t, 5*time.Second, "b learns a-old", func() bool {
		p, ok := b.peer(k.Public())
		return ok && p.Nickname == "a-old" && p.Reachable
	})
	old, _ := b.peer(k.Public())
	a1.Close()
	a2 := newTestRouter(t, "a-new", withKey(k))
	a2.Connect(b.addr())
	waitFor(t, 5*time.Second, "b sees the restarted a", func() bool {
		p, ok := b.peer(k.Public())
		return ok && p.Nickname == "a-new" && p.Reachable && p.Direct
	})
	p, _ := b.peer(k.Public())
	if p.Version <= old.Version {
		t.Errorf("version %d not above %d", p.Version, old.Version)
	}
	if p.Port == old.Port {
		t.Errorf("port not updated: %d", p.Port)
	}
	// A stale copy of the old record must not win.
	b.mu.Lock()
	stale := Record{Key: k.Public(), Version: old.Version, Nickname: "a-old"}
	stale.Sign(k) // signed: only its version may make it lose
	b.applyRecordsLocked(nil, []Record{stale})
	b.mu.Unlock()
	if p, _ := b.peer(k.Public()); p.Nickname != "a-new" {
		t.Errorf("stale record won: %+v", p)
	}
}

func TestConnectToSelf(t *testing.T) {
	a := newTestRouter(t, "a")
	if err := a.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "self connection fails", func() bool {
		cs := a.Connections()
		return len(cs) == 1 && cs[0].State == StateFailed && strings.Contains(cs[0].Err, "ourselves")
	})
	if a.Counters()[CtrConnSelf] == 0 {
		t.Error("control_connection_self not counted")
	}
	if len(a.Peers()) != 1 {
		t.Errorf("peers: %+v", a.Peers())
	}
}

func TestDuplicateConnectionsResolve(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	a.Connect(b.addr())
	b.Connect(a.addr())
	waitFor(t, 5*time.Second, "both targets established over one connection", func() bool {
		ca, cb := a.Connections(), b.Connections()
		return len(ca) == 1 && len(cb) == 1 && ca[0].State == StateEstablished && cb[0].State == StateEstablished
	})
	// Exactly one connection, dialled by the smaller key, on both sides.
	lo := a
	if b.Self().Less(a.Self()) {
		lo = b
	}
	keptByLo := func(r *testRouter) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.active {
			return len(r.active) == 1 && c.dialler(r.Self()) == lo.Self()
		}
		return false
	}
	waitFor(t, 5*time.Second, "both ends keep the connection dialled by the smaller key", func() bool {
		return keptByLo(a) && keptByLo(b)
	})
	if a.Counters()[CtrConnDuplicate]+b.Counters()[CtrConnDuplicate] == 0 {
		t.Log("no duplicate arose this time (one dial finished before the other began)")
	}
}

func TestConnectValidation(t *testing.T) {
	a := newTestRouter(t, "a")
	for _, bad := range []string{"", "   ", "foo:bar:baz", "host:0", "host:99999", "-bad-.example", "a b", "[::1", "1.2.3.4:x"} {
		if err := a.Connect(bad); err == nil {
			t.Errorf("Connect(%q) accepted", bad)
		}
	}
	if len(a.Connections()) != 0 {
		t.Errorf("bad targets added:\n%s", connStates(a))
	}
}

func TestParseTarget(t *testing.T) {
	r, err := New(Config{Private: newKey(t), Port: 6783})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, in string
		host     string
		port     uint16
		ok       bool
	}{
		{"ipv4", "192.0.2.1", "192.0.2.1", 6783, true},
		{"ipv4 port", "192.0.2.1:7000", "192.0.2.1", 7000, true},
		{"ipv6", "2001:db8::1", "2001:db8::1", 6783, true},
		{"ipv6 brackets", "[2001:db8::1]", "2001:db8::1", 6783, true},
		{"ipv6 port", "[2001:db8::1]:7000", "2001:db8::1", 7000, true},
		{"name", "Host-1.Example.com.", "host-1.example.com", 6783, true},
		{"name port", "localhost:1", "localhost", 1, true},
		{"mapped", "::ffff:192.0.2.1", "192.0.2.1", 6783, true},
		{"empty", "", "", 0, false},
		{"port 0", "h:0", "", 0, false},
		{"bad port", "h:65536", "", 0, false},
		{"bad name", "under_score", "", 0, false},
		{"label dash", "-a.b", "", 0, false},
		{"zone", "fe80::1%eth0", "", 0, false},
		{"colons", "a:b:c", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, port, err := r.parseTarget(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if tt.ok && (host != tt.host || port != tt.port) {
				t.Errorf("= %q, %d; want %q, %d", host, port, tt.host, tt.port)
			}
		})
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		a := newTestRouter(t, "a")
		b := newTestRouter(t, "b")
		a.Connect(b.addr())
		b.Connect("127.0.0.1:1") // a target that keeps failing
		waitFor(t, 5*time.Second, "connected", func() bool { p, _ := a.peer(b.Self()); return p.Direct })
		a.Close()
		b.Close()
		if err := a.Start(); !errors.Is(err, ErrClosed) {
			t.Errorf("Start after Close: %v", err)
		}
		if err := a.Connect("127.0.0.1:2"); !errors.Is(err, ErrClosed) {
			t.Errorf("Connect after Close: %v", err)
		}
	}()
	waitFor(t, 5*time.Second, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}

// fakeClock is a wall clock that tests can move forward.
type fakeClock struct{ offset atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *fakeClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

func TestUnreachablePeerExpires(t *testing.T) {
	var clk fakeClock
	a := newTestRouter(t, "a", func(c *Config, _ *tunables) { c.Now = clk.now })
	b := newTestRouter(t, "b")
	a.Connect(b.addr())
	waitFor(t, 5*time.Second, "connected", func() bool { p, _ := a.peer(b.Self()); return p.Reachable })
	a.Forget(b.addr())
	waitFor(t, 5*time.Second, "b unreachable", func() bool { p, ok := a.peer(b.Self()); return ok && !p.Reachable })
	clk.advance(30 * time.Second)
	time.Sleep(100 * time.Millisecond) // several maintenance ticks: b must stay
	if _, ok := a.peer(b.Self()); !ok {
		t.Fatal("b dropped after 30 s")
	}
	clk.advance(31 * time.Second)
	waitFor(t, 5*time.Second, "b dropped", func() bool { _, ok := a.peer(b.Self()); return !ok })
	if a.Counters()[CtrPeersExpired] != 1 {
		t.Errorf("counters: %v", a.Counters())
	}
	// b comes back by its own gossip.
	a.Connect(b.addr())
	waitFor(t, 5*time.Second, "b back", func() bool { p, _ := a.peer(b.Self()); return p.Reachable })
}

func TestAntiEntropyRepairs(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	a.Connect(b.addr())
	waitFor(t, 5*time.Second, "connected", func() bool { p, _ := b.peer(a.Self()); return p.Direct })
	// Let the connection's own digest exchange finish first (it is over
	// by the first round, 300 ms here): a record it carried would reach
	// a without a round, and the counters could not tell.
	rounds := func() uint64 { return a.Counters()[CtrAntiEntropy] + b.Counters()[CtrAntiEntropy] }
	waitFor(t, 5*time.Second, "a first anti-entropy round", func() bool { return rounds() > 0 })
	before := rounds()
	// b learns a record "from a" so flooding skips a: only anti-entropy
	// can bring it to a.
	xPriv := newKey(t)
	x := xPriv.Public()
	rec := Record{Key: x, Version: 1, Nickname: "x"}
	rec.Sign(xPriv)
	b.mu.Lock()
	b.applyRecordsLocked(b.active[a.Self()], []Record{rec})
	b.mu.Unlock()
	waitFor(t, 5*time.Second, "a learns x by anti-entropy", func() bool { _, ok := a.peer(x); return ok })
	// Either side's round repairs it: a's digest shows b what a lacks,
	// b's shows a that b has something newer.
	if rounds() == before {
		t.Error("no anti-entropy round counted while a learned x")
	}
}

func TestCloseDuringHandshake(t *testing.T) {
	a := newTestRouter(t, "a")
	nc := rawDialAddr(t, a.addr())
	nc.Write([]byte{0, 48, 1, 2, 3})  // a handshake that never completes
	time.Sleep(20 * time.Millisecond) // let the router start reading it
	start := time.Now()
	a.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v with a handshake pending", d)
	}
}

// A joiner whose only target is at its connection limit is referred to the
// mesh and dials the referrer's neighbours at the addresses the referrer
// sees them at: it reaches nobody yet, so no reachable peer tells it where
// they are.
func TestReferralGivesAddressesToDial(t *testing.T) {
	full := newTestRouter(t, "full", func(c *Config, _ *tunables) { c.ConnLimit = 1 })
	b := newTestRouter(t, "b")
	if err := full.Connect(b.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "full and b connected", func() bool {
		p, ok := full.peer(b.Self())
		return ok && p.Reachable && p.Direct
	})
	joiner := newTestRouter(t, "joiner")
	if err := joiner.Connect(full.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the joiner connected to b, to whom full referred it", func() bool {
		p, ok := joiner.peer(b.Self())
		q, ok2 := joiner.peer(full.Self())
		return ok && ok2 && p.Reachable && p.Direct && q.Reachable
	})
	if joiner.Counters()[CtrConnBusy] == 0 {
		t.Error("the joiner was never referred (full was not at its limit)")
	}
}
