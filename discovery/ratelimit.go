package discovery

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// rateLimiter is a token bucket (golang.org/x/time/rate) per source IP for inbound handshakes. A
// handshake costs the responder a DH and a decryption attempt; the bucket
// keeps one noisy or hostile address from monopolising that.
type rateLimiter struct {
	rate  rate.Limit // tokens per second
	burst int
	max   int // tracked addresses; beyond it full buckets are pruned

	mu      sync.Mutex // guards buckets
	buckets map[netip.Addr]*rate.Limiter
}

func newRateLimiter(perSec, burst float64) *rateLimiter {
	return &rateLimiter{rate: rate.Limit(perSec), burst: max(1, int(burst)), max: 4096, buckets: map[netip.Addr]*rate.Limiter{}}
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
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[ip] = b
	}
	return b.AllowN(now, 1)
}

// pruneLocked forgets buckets that have refilled; if every bucket is busy
// (a flood from many addresses) it forgets them all, which errs toward
// accepting.
func (l *rateLimiter) pruneLocked(now time.Time) {
	for ip, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, ip)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}
