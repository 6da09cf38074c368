package tunnel

import "sync"

// Forwarding budget per source peer, in bytes of relay frames: a relay gives
// each member up to relayRate bytes per second of its bandwidth, with bursts
// of relayBurst. The default is far above what one wireguard-go peer sends
// (a few Gbit/s), so it only stops a member that floods its relays.
const (
	defaultRelayRate  = 1 << 30 // bytes/s (8.6 Gbit/s)
	defaultRelayBurst = 8 << 20 // bytes
)

// tokenBucket is a byte budget refilled at a steady rate. Its mutex is held
// only for the arithmetic, never across a send; it is taken once per
// forwarded frame, by the receive goroutines only.
type tokenBucket struct {
	mu     sync.Mutex
	tokens float64
	last   int64 // unix ns of the last refill; 0: never used (full)
}

// allow takes n tokens if there are that many at time now (unix ns).
func (b *tokenBucket) allow(now int64, n int, rate, burst float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == 0 {
		b.tokens, b.last = burst, now
	}
	if dt := now - b.last; dt > 0 {
		b.tokens = min(burst, b.tokens+float64(dt)*rate/1e9)
		b.last = now
	}
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}
