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
// ends the backoff, and so does the path's coming back after a silence
// (PathHeard). Without it a path that answers nothing got the whole
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
	heard    int64 // unix ns of the newest answer on the path PathHeard was told of; 0 none
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

// PathHeard tells the search of the newest answer the path gave to
// something else (its path probes, every second or five): at is when. An
// answer after a silence of Valid or more, or the first one, while the
// search backs off means the path came back, maybe another one than it
// proved before (a move behind a smaller hop while the peer was
// unreachable): the next round comes at once, the backoff starts over,
// rather than up to MaxBackoff slow intervals (80 s) later. A path that
// answers its path probes all along but not the MTU probes (a relay
// starved of CPU answering late, an old peer) keeps backing off: its gaps
// are shorter than Valid.
func (s *Search) PathHeard(at time.Time) {
	a := at.UnixNano()
	if a <= s.heard {
		return
	}
	if s.backoff > 1 && (s.heard == 0 || a-s.heard >= int64(Valid)) {
		s.roundAt = 0 // ToProbe: no unanswered round to count
		s.next = min(s.next, a)
	}
	s.heard = a
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
