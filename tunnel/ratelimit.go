package tunnel

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Forwarding budget per source peer, in bytes of relay frames: a relay gives
// each member up to relayRate bytes per second of its bandwidth, with bursts
// of relayBurst. The default is far above what one wireguard-go peer sends
// (a few Gbit/s), so it only stops a member that floods its relays.
const (
	defaultRelayRate  = 1 << 30 // bytes/s (8.6 Gbit/s)
	defaultRelayBurst = 8 << 20 // bytes
)

// tokenBucket is a byte budget refilled at a steady rate: a
// golang.org/x/time/rate Limiter (the one token bucket of the code base),
// made on first use with the rate and burst of that call. Its mutex is held
// only for the arithmetic, never across a send; it is taken once per
// forwarded frame, by the receive goroutines only.
type tokenBucket struct {
	l atomicLimiter
}

// allow takes n tokens if there are that many at time now (unix ns).
func (b *tokenBucket) allow(now int64, n int, perSec, burst float64) bool {
	return b.l.get(perSec, burst).AllowN(time.Unix(0, now), n)
}

// atomicLimiter makes its Limiter once, whichever receive goroutine gets
// there first.
type atomicLimiter struct {
	once sync.Once
	l    *rate.Limiter
}

func (a *atomicLimiter) get(perSec, burst float64) *rate.Limiter {
	a.once.Do(func() { a.l = rate.NewLimiter(rate.Limit(perSec), int(burst)) })
	return a.l
}
