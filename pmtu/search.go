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
const (
	FastInterval = 1 * time.Second
	FastRounds   = 5
	SlowInterval = 5 * time.Second
	Valid        = 3*SlowInterval + time.Second
)

// Search is the probe state of one path to one peer. The zero value is not
// ready: use NewSearch. Not safe for concurrent use; answers that arrive on
// the packet path are handed over as times (Answered) by the owner.
type Search struct {
	sizes    []int   // UDP payload sizes, largest first
	answered []int64 // unix ns of each size's last answer; 0 never
	next     int64   // unix ns of the next round
	rounds   int
}

// NewSearch starts a search over the sizes of ladder (largest first) at now.
func NewSearch(ladder []int, now time.Time) *Search {
	return &Search{sizes: ladder, answered: make([]int64, len(ladder)), next: now.UnixNano()}
}

// Sizes returns the ladder.
func (s *Search) Sizes() []int { return s.sizes }

// Answered records an answer to a probe of size at now. Sizes not on the
// ladder are ignored.
func (s *Search) Answered(size int, now time.Time) {
	for i, z := range s.sizes {
		if z == size {
			s.answered[i] = now.UnixNano()
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
	var newest int64
	for _, t := range s.answered {
		newest = max(newest, t)
	}
	if newest == 0 {
		return 0
	}
	if i := s.best(newest); i >= 0 {
		return s.sizes[i]
	}
	return 0
}

// ToProbe appends to out the sizes to probe at now and schedules the next
// round; it appends nothing when no round is due.
func (s *Search) ToProbe(now time.Time, out []int) []int {
	n := now.UnixNano()
	if n < s.next {
		return out
	}
	s.rounds++
	if s.rounds < FastRounds {
		s.next = n + int64(FastInterval)
	} else {
		s.next = n + int64(SlowInterval)
	}
	last := len(s.sizes) - 1
	if b := s.best(n); b >= 0 {
		last = min(b+1, last)
	}
	return append(out, s.sizes[:last+1]...)
}
