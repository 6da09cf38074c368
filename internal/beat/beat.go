// Package beat gives a process's periodic loops one shared rhythm: a
// Ticker fires at the instants phase + k·period, with one phase per
// process, so loops with the same period (or periods that divide each
// other) wake together, in one pass of the Go runtime's timers, instead of
// each at its own moment.
//
// An idle daemon's cost is mostly its wakeups, not its work: every timer
// that fires on its own wakes a thread, and the runtime's sysmon thread
// polls for a while after each. Loops of different packages ticking once a
// second at their own phases woke an idle daemon several times a second
// for a few microseconds of work each (issue 18); on one beat they wake it
// once.
//
// The phase is random per process, so that hosts sharing a clock (a test
// bed, or NTP) do not all wake at the same instant.
package beat

import (
	"math/rand/v2"
	"sync"
	"time"
)

// phase is this process's offset of every beat from the Unix epoch, in
// nanoseconds, below one second.
var phase = rand.Int64N(int64(time.Second))

// Next is the first beat of period strictly after now.
func Next(now time.Time, period time.Duration) time.Time {
	if period <= 0 {
		return now
	}
	p := int64(period)
	off := (now.UnixNano() - phase%p) % p
	if off < 0 {
		off += p
	}
	return now.Add(time.Duration(p - off))
}

// Ticker delivers the beats of one period on C, like time.Ticker: a beat
// the receiver was too slow for is dropped, not queued.
type Ticker struct {
	C <-chan time.Time
	c chan time.Time

	mu      sync.Mutex
	period  time.Duration
	t       *time.Timer
	stopped bool
}

// NewTicker starts a Ticker of period, whose first beat is the next one
// after now: at most period away.
func NewTicker(period time.Duration) *Ticker {
	if period <= 0 {
		panic("beat: non-positive period")
	}
	c := make(chan time.Time, 1)
	tk := &Ticker{C: c, c: c, period: period}
	tk.mu.Lock()
	defer tk.mu.Unlock()
	tk.t = time.AfterFunc(time.Until(Next(time.Now(), period)), tk.fire)
	return tk
}

// fire delivers one beat and arms the next, computed from the clock each
// time so the beats stay on the phase however late one was.
func (tk *Ticker) fire() {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if tk.stopped {
		return
	}
	now := time.Now()
	select {
	case tk.c <- now:
	default:
	}
	tk.t.Reset(time.Until(Next(now, tk.period)))
}

// Reset changes the period; the next beat is the next one of the new
// period.
func (tk *Ticker) Reset(period time.Duration) {
	if period <= 0 {
		panic("beat: non-positive period")
	}
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if tk.stopped || tk.period == period {
		return
	}
	tk.period = period
	tk.t.Reset(time.Until(Next(time.Now(), period)))
}

// Stop stops the beats; none is delivered after it returns, though one
// may already wait in C.
func (tk *Ticker) Stop() {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	tk.stopped = true
	tk.t.Stop()
}

// SpreadPeers is how many peers a repair round of Spread's base period
// reaches before the period grows.
const SpreadPeers = 10

// Spread is the period of a repair (anti-entropy) round that sends one
// message to every peer: base up to SpreadPeers peers, then growing in
// proportion to their number, so that a host sends, and receives, at most
// SpreadPeers such messages per base period however large the mesh. A
// round repairs only what was lost (changes are sent at once, and state
// to a peer when it arrives), so at N peers the repair waits longer, not
// the change.
func Spread(base time.Duration, peers int) time.Duration {
	if peers <= SpreadPeers {
		return base
	}
	return base * time.Duration(peers) / SpreadPeers
}
