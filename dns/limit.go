package dns

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Bounds on the forwarder. Answers from the table cost a map lookup and a
// write; a forward costs a socket and a goroutine for up to ForwardTimeout
// per upstream, so forwards are what a flood from one container would pile
// up (5,000 queries once held 1,056 sockets and 1,075 goroutines).
const (
	// DefaultMaxForwards bounds forwards in flight; one more is answered
	// SERVFAIL at once (dns_forward_dropped_busy).
	DefaultMaxForwards = 64
	// DefaultForwardRate and DefaultForwardBurst bound each source address's
	// forwards per second; beyond them queries are dropped without an answer
	// (dns_forward_dropped_rate), as a resolver under a flood does, so the
	// flood gets no amplification.
	DefaultForwardRate  = 50
	DefaultForwardBurst = 100
	// maxTCPConns bounds TCP connections being served at once; further
	// accepts wait.
	maxTCPConns = 128
	// maxSources bounds the per-source buckets kept; beyond it idle buckets
	// are forgotten.
	maxSources = 4096
)

// sourceLimiter is a token bucket per source address.
type sourceLimiter struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex // guards buckets
	buckets map[netip.Addr]*rate.Limiter
}

func newSourceLimiter(perSec float64, burst int) *sourceLimiter {
	return &sourceLimiter{rate: rate.Limit(perSec), burst: burst, buckets: map[netip.Addr]*rate.Limiter{}}
}

// allow takes one token of src's bucket at now.
func (l *sourceLimiter) allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= maxSources {
			for a, o := range l.buckets {
				if o.TokensAt(now) >= float64(l.burst) {
					delete(l.buckets, a)
				}
			}
			if len(l.buckets) >= maxSources {
				// Every bucket busy: a flood from many addresses. Forgetting
				// them errs toward answering; MaxForwards still bounds cost.
				clear(l.buckets)
			}
		}
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[src] = b
	}
	return b.AllowN(now, 1)
}

// remoteAddr is the client's address of a query, unmapped.
func remoteAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// allowedClient reports whether src may use this server: Config.Clients
// empty allows everyone.
func (s *Server) allowedClient(src netip.Addr) bool {
	if len(s.cfg.Clients) == 0 {
		return true
	}
	for _, p := range s.cfg.Clients {
		if p.Contains(src) {
			return true
		}
	}
	return false
}
