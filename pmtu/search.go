package pmtu

import "time"

// # Probing
//
// A Search finds the largest UDP payload that crosses the path to one peer.
// Each round the caller sends one padded probe of each size ToProbe names;
// the peer answers each probe that arrived with a small reply naming its
// size, and the caller records it with Answered. A size counts as crossing
// while its last answer is younger than Valid. Rounds come every
// FastInterval while the path is new (FastRounds rounds), then every
// SlowInterval, also for a peer that never answers (an older version, or
// a dead path: the route's MTU stands then).
//
// A round probes every size above the largest that crosses (to find a path
// that grew), that size itself (to confirm it) and the next smaller one (so
// that, when the path shrinks, a fresh answer is there to fall back to).
// A lost probe costs nothing: an answer stays valid for several rounds.
//
// A round none of whose probes was answered by the next doubles the wait
// before that next one, up to MaxBackoff times the interval; any answer
// ends the backoff. Without it a path that answers nothing got the whole
// ladder (a dozen datagrams near the MTU) every round, forever: a relay
// starved of CPU answered late, so no size stayed valid, so every pair
// relayed through it sent it whole ladders, which it had to forward before
// anything else in its socket's queue (probes, handshakes): the queue grew
// to megabytes and a minute of delay (the VM test, issue 16).
const (
	FastInterval = 1 * time.Second
	FastRounds   = 5
	SlowInterval = 5 * time.Second
	Valid        = 3*SlowInterval + time.Second
	MaxBackoff   = 16
)

// Search is the probe state of one path to one peer. The zero value is not
// ready: use NewSearch. Not safe for concurrent use; answers that arrive on
// the packet path are handed over as times (Answered) by the owner.
type Search struct {
	sizes    []int   // UDP payload sizes, largest first
	answered []int64 // unix ns each size's last answered probe was sent; 0 never
	next     int64   // unix ns of the next round
	rounds   int
	roundAt  int64 // unix ns of the last round; 0 none yet
	backoff  int64 // the interval's multiplier: 1, doubled per unanswered round
}

// NewSearch starts a search over the sizes of ladder (largest first) at now.
func NewSearch(ladder []int, now time.Time) *Search {
	return &Search{sizes: ladder, answered: make([]int64, len(ladder)), next: now.UnixNano()}
}

// Sizes returns the ladder.
func (s *Search) Sizes() []int { return s.sizes }

// Answered records an answer to a probe of size sent at sent (the time the
// answer echoes): an answer tells of the path as it was when the probe
// crossed, so one that came back late is as old as its probe. Sizes not on
// the ladder are ignored.
func (s *Search) Answered(size int, sent time.Time) {
	for i, z := range s.sizes {
		if z == size {
			s.answered[i] = max(s.answered[i], sent.UnixNano())
			return
		}
	}
}

// best is the index of the largest size answered within Valid, or -1.
func (s *Search) best(now int64) int {
	for i := range s.sizes {
		if t := s.answered[i]; t != 0 && now-t < int64(Valid) {
			return i
		}
	}
	return -1
}

// Largest is the largest UDP payload known to cross at now; 0 when none is.
func (s *Search) Largest(now time.Time) int {
	if i := s.best(now.UnixNano()); i >= 0 {
		return s.sizes[i]
	}
	return 0
}

// LastKnown is the largest UDP payload that crossed when the path was last
// heard from: the largest size answered within Valid of the newest answer,
// however old that answer is; 0 if no probe was ever answered. An idle pair
// sends no probes, so its answers expire (Largest is 0 when it wakes), yet
// the path is the one they measured until a new round says otherwise:
// falling back to the link's MTU would send packets a black hole drops (an
// idle pair behind a 1380 hop woke at 1404 and kept it while idle again).
func (s *Search) LastKnown() int {
	newest := s.newest()
	if newest == 0 {
		return 0
	}
	if i := s.best(newest); i >= 0 {
		return s.sizes[i]
	}
	return 0
}

// newest is when the newest answered probe was sent; 0 never.
func (s *Search) newest() int64 {
	var newest int64
	for _, t := range s.answered {
		newest = max(newest, t)
	}
	return newest
}

// ToProbe appends to out the sizes to probe at now and schedules the next
// round; it appends nothing when no round is due.
func (s *Search) ToProbe(now time.Time, out []int) []int {
	n := now.UnixNano()
	if n < s.next {
		return out
	}
	s.rounds++
	switch {
	case s.roundAt == 0 || s.newest() >= s.roundAt:
		s.backoff = 1
	case s.backoff < MaxBackoff:
		s.backoff *= 2 // the last round went unanswered
	}
	s.roundAt = n
	if s.rounds < FastRounds {
		s.next = n + s.backoff*int64(FastInterval)
	} else {
		s.next = n + s.backoff*int64(SlowInterval)
	}
	last := len(s.sizes) - 1
	if b := s.best(n); b >= 0 {
		last = min(b+1, last)
	}
	return append(out, s.sizes[:last+1]...)
}
