package nat

import (
	"net/netip"
	"time"
)

// pair is the ICE state of one peer, seen from this side: whether a session
// runs, the path it found, and when to try again. It is a pure state
// machine: no clock reads, no I/O, no goroutines. The Manager feeds it the
// time and events and carries out the actions it returns.
//
//	          tick: relayed (controlling), offer (controlled)
//	  idle ──────────────────────────────────────────► running
//	   ▲                                               │   │
//	   │ retry time                       selected     │   │ failed, bye, timeout
//	   │                                  ┌────────────┘   ▼
//	backoff ◄──── path relayed > deadAfter ─ direct     backoff (2 s, 4 s, … 60 s)
//
// Only the controlling side (the smaller key) starts sessions; the
// controlled side asks with a request when it sees the peer relayed, and
// answers every offer (a new offer replaces whatever it had, so the two
// sides never disagree for long).
type pair struct {
	controlling bool

	state    pairState
	session  uint64    // ID of the running session, or of the one that found the path
	started  time.Time // when the running session started
	retryAt  time.Time // backoff: when idle again
	asked    time.Time // controlled: when we last sent a request
	failures int       // sessions failed in a row

	// While direct.
	endpoint   netip.AddrPort
	localType  string // candidate types of the selected pair: host, srflx, prflx
	remoteType string
	selectedAt time.Time
	lastDirect time.Time     // last tick the tunnel used the direct path
	tookFor    time.Duration // from session start to selection
}

type pairState uint8

const (
	pairIdle    pairState = iota // no session: the path is direct without ICE, or we wait to start
	pairRunning                  // an ICE session runs
	pairDirect                   // ICE selected a path; its address is the peer's endpoint
	pairBackoff                  // a session failed or its path died; wait for retryAt
)

func (s pairState) String() string {
	switch s {
	case pairRunning:
		return "checking"
	case pairDirect:
		return "connected"
	case pairBackoff:
		return "backoff"
	}
	return "idle"
}

// action is what the Manager must do after a pair's transition.
type action uint8

const (
	actNone    action = iota
	actStart          // controlling: start a session with ID p.session and send the offer
	actRequest        // controlled: send the controller a request
	actStop           // close the session (it failed or timed out) and send bye
	actClear          // the selected path died: close the session, drop the endpoint
)

// Timing of the pair machine.
const (
	sessionTimeout = 15 * time.Second // a session that selects nothing by then has failed
	requestEvery   = 5 * time.Second  // controlled: how often to ask while relayed
	deadAfter      = 10 * time.Second // direct ICE path the tunnel keeps relaying: dead
	retryDead      = 1 * time.Second  // a dead path is retried soon: the NAT likely just forgot it
	backoffBase    = 2 * time.Second
	backoffMax     = 60 * time.Second
)

func backoff(failures int) time.Duration {
	d := backoffBase
	for i := 1; i < failures && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}

// tick advances p to now. relayed is the tunnel's verdict on the peer: its
// traffic goes through a relay (no direct path works).
func (p *pair) tick(now time.Time, relayed bool, newSession func() uint64) action {
	switch p.state {
	case pairBackoff:
		if now.Before(p.retryAt) {
			return actNone
		}
		p.state = pairIdle
		fallthrough
	case pairIdle:
		if !relayed {
			return actNone
		}
		if p.controlling {
			p.start(now, newSession())
			return actStart
		}
		if p.asked.IsZero() || now.Sub(p.asked) >= requestEvery {
			p.asked = now
			return actRequest
		}
	case pairRunning:
		if now.Sub(p.started) >= sessionTimeout {
			p.fail(now)
			return actStop
		}
	case pairDirect:
		if !relayed {
			p.lastDirect = now
			return actNone
		}
		if now.Sub(p.lastDirect) >= deadAfter {
			p.dead(now)
			return actClear
		}
	}
	return actNone
}

func (p *pair) start(now time.Time, id uint64) {
	p.state = pairRunning
	p.session = id
	p.started = now
	p.endpoint = netip.AddrPort{}
}

func (p *pair) fail(now time.Time) {
	p.failures++
	p.state = pairBackoff
	p.retryAt = now.Add(backoff(p.failures))
	p.endpoint = netip.AddrPort{}
}

func (p *pair) dead(now time.Time) {
	p.state = pairBackoff
	p.retryAt = now.Add(retryDead)
	p.endpoint = netip.AddrPort{}
}

// selected records the path ICE selected in session id. It reports whether
// the endpoint changed.
func (p *pair) selected(now time.Time, id uint64, ep netip.AddrPort, localType, remoteType string) bool {
	if id != p.session || (p.state != pairRunning && p.state != pairDirect) || !ep.IsValid() {
		return false
	}
	if p.state == pairRunning {
		p.tookFor = now.Sub(p.started)
		p.selectedAt = now
		p.lastDirect = now
	}
	p.state = pairDirect
	p.failures = 0
	changed := p.endpoint != ep
	p.endpoint, p.localType, p.remoteType = ep, localType, remoteType
	return changed
}

// failed records that session id failed (its agent gave up, or the peer
// said bye). It returns the action for the session.
func (p *pair) failed(now time.Time, id uint64) action {
	if id != p.session {
		return actNone
	}
	switch p.state {
	case pairRunning:
		p.fail(now)
		return actStop
	case pairDirect:
		p.dead(now)
		return actClear
	}
	return actNone
}

// offer is an offer for session id from the controlling peer (we are
// controlled). It reports whether to answer it with a new session; a
// session already running or connected with that ID is kept.
func (p *pair) offer(now time.Time, id uint64) bool {
	if p.controlling {
		return false
	}
	if p.session == id && (p.state == pairRunning || p.state == pairDirect) {
		return false
	}
	p.start(now, id)
	return true
}

// request is the controlled peer asking for a session (we are
// controlling). A request while connected means the peer found the path
// dead first.
func (p *pair) request(now time.Time, newSession func() uint64) action {
	if !p.controlling {
		return actNone
	}
	switch p.state {
	case pairIdle:
		p.start(now, newSession())
		return actStart
	case pairDirect:
		if now.Sub(p.selectedAt) < deadAfter {
			return actNone // a request sent before our offer reached it
		}
		p.start(now, newSession())
		return actStart // the caller closes the old session first
	}
	return actNone
}

// reset forgets everything (the peer left or is unreachable).
func (p *pair) reset() {
	*p = pair{controlling: p.controlling}
}
