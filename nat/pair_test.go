package nat

import (
	"net/netip"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time                    { return c.t }
func (c *fakeClock) advance(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

func ids() func() uint64 {
	var n uint64
	return func() uint64 { n++; return n }
}

var ep1 = netip.MustParseAddrPort("198.51.100.7:40000")

func TestPairControllingLifecycle(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	next := ids()
	p := &pair{controlling: true}
	if a := p.tick(c.now(), false, next); a != actNone {
		t.Fatalf("direct peer: %v", a)
	}
	if a := p.tick(c.advance(time.Second), true, next); a != actStart || p.session != 1 {
		t.Fatalf("relayed peer: %v session %d", a, p.session)
	}
	// Selection in another session is ignored; in ours, taken.
	if p.selected(c.now(), 99, ep1, "host", "srflx") {
		t.Fatal("selection of a stale session taken")
	}
	if !p.selected(c.advance(1500*time.Millisecond), 1, ep1, "host", "srflx") || p.state != pairDirect || p.tookFor != 1500*time.Millisecond {
		t.Fatalf("selected: %+v", p)
	}
	// The tunnel takes a while to switch: relayed within deadAfter is fine.
	if a := p.tick(c.advance(deadAfter-time.Second), true, next); a != actNone {
		t.Fatalf("grace: %v", a)
	}
	p.tick(c.advance(time.Second/2), false, next) // direct now
	for range 20 {
		if a := p.tick(c.advance(time.Second), false, next); a != actNone {
			t.Fatalf("healthy: %v", a)
		}
	}
	// The path dies: relayed for deadAfter → clear, retried after retryDead.
	var a action
	for range int(deadAfter/time.Second) + 1 {
		if a = p.tick(c.advance(time.Second), true, next); a != actNone {
			break
		}
	}
	if a != actClear || p.state != pairBackoff || p.endpoint.IsValid() {
		t.Fatalf("dead: %v %+v", a, p)
	}
	if a := p.tick(c.advance(retryDead), true, next); a != actStart || p.session != 2 {
		t.Fatalf("retry: %v %d", a, p.session)
	}
}

func TestPairBackoff(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	next := ids()
	p := &pair{controlling: true}
	var waits []time.Duration
	p.tick(c.now(), true, next)
	for range 7 {
		// The session times out.
		var a action
		for a == actNone {
			a = p.tick(c.advance(time.Second), true, next)
		}
		if a != actStop {
			t.Fatalf("want stop, got %v", a)
		}
		start := c.now()
		for p.tick(c.advance(time.Second), true, next) != actStart {
		}
		waits = append(waits, c.now().Sub(start))
	}
	want := []time.Duration{2, 4, 8, 16, 32, 60, 60}
	for i := range want {
		if waits[i] != want[i]*time.Second {
			t.Fatalf("waits %v, want %v s", waits, want)
		}
	}
	// Success resets the count.
	p.selected(c.advance(time.Second), p.session, ep1, "host", "host")
	if p.failures != 0 {
		t.Fatal("failures kept")
	}
	// A bye (failed) while connected is a dead path.
	if a := p.failed(c.now(), p.session); a != actClear {
		t.Fatalf("failed while direct: %v", a)
	}
}

func TestPairControlled(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	next := ids()
	p := &pair{}
	if a := p.tick(c.now(), true, next); a != actRequest {
		t.Fatalf("first: %v", a)
	}
	if a := p.tick(c.advance(time.Second), true, next); a != actNone {
		t.Fatalf("asks too often: %v", a)
	}
	if a := p.tick(c.advance(requestEvery), true, next); a != actRequest {
		t.Fatalf("asks again: %v", a)
	}
	if !p.offer(c.now(), 42) || p.state != pairRunning {
		t.Fatal("offer refused")
	}
	if p.offer(c.now(), 42) {
		t.Fatal("duplicate offer taken")
	}
	p.selected(c.advance(time.Second), 42, ep1, "srflx", "prflx")
	// A new offer replaces the connected session.
	if !p.offer(c.advance(time.Second), 43) || p.endpoint.IsValid() {
		t.Fatalf("new offer: %+v", p)
	}
	// The controlled side never starts sessions.
	if a := p.request(c.now(), next); a != actNone {
		t.Fatalf("request at controlled: %v", a)
	}
	p.reset()
	if p.state != pairIdle || p.controlling {
		t.Fatalf("reset: %+v", p)
	}
}

func TestPairRequestAtController(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	next := ids()
	p := &pair{controlling: true}
	if a := p.request(c.now(), next); a != actStart {
		t.Fatalf("idle: %v", a)
	}
	if a := p.request(c.now(), next); a != actNone {
		t.Fatalf("running: %v", a)
	}
	p.selected(c.advance(time.Second), p.session, ep1, "host", "host")
	if a := p.request(c.advance(time.Second), next); a != actNone {
		t.Fatalf("fresh path: %v", a)
	}
	if a := p.request(c.advance(deadAfter), next); a != actStart {
		t.Fatalf("peer says dead: %v", a)
	}
}
