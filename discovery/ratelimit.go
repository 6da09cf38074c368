package discovery

import (
	"net/netip"
	"sync"
	"time"
)

// rateLimiter is a token bucket per source IP for inbound handshakes. A
// handshake costs the responder a DH and a decryption attempt; the bucket
// keeps one noisy or hostile address from monopolising that.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64
	max   int // tracked addresses; beyond it full buckets are pruned

	mu      sync.Mutex // guards buckets
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate, burst float64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: burst, max: 4096, buckets: map[netip.Addr]*bucket{}}
}

// allow takes one token for ip at time now, reporting whether there was one.
func (l *rateLimiter) allow(ip netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[ip]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.pruneLocked(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[ip] = b
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt*l.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// pruneLocked forgets buckets that have refilled; if every bucket is busy
// (a flood from many addresses) it forgets them all, which errs toward
// accepting.
func (l *rateLimiter) pruneLocked(now time.Time) {
	for ip, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, ip)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}
