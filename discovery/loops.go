package discovery

import (
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/weavewg/weavewg/internal/beat"
)

// acceptLoop accepts control connections until the listener closes.
// Admission is cheap and ordered: per-IP token bucket, then a bounded number
// of handshakes in progress; each admitted connection gets one goroutine.
func (r *Router) acceptLoop() {
	defer r.wg.Done()
	for {
		nc, err := r.ln.Accept()
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.log.Warn("accepting control connections", "err", err.Error())
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		r.ctr.inc(CtrAccepted)
		ip := addrPortOf(nc.RemoteAddr()).Addr()
		if !r.limiter.allow(ip, r.now()) {
			r.ctr.inc(CtrHandshakeRateLimit)
			r.logOnce(slog.LevelInfo, "in:"+ip.String(), "ratelimit",
				"dropping control connections: too many handshakes from one address", "from", ip.String())
			nc.Close()
			continue
		}
		select {
		case r.hsSlots <- struct{}{}:
		default:
			r.ctr.inc(CtrHandshakeBusy)
			nc.Close()
			continue
		}
		r.wg.Add(1)
		go r.serveInbound(nc)
	}
}

// serveInbound handshakes with and then serves one inbound connection.
func (r *Router) serveInbound(nc net.Conn) {
	defer r.wg.Done()
	remote := addrPortOf(nc.RemoteAddr())
	c, err := r.establish(r.ctx, nc, false, remote.String(), nil, Epoch{})
	var jr *joinRequest
	if errors.As(err, &jr) {
		err = r.admit(nc, jr.m1)
		<-r.hsSlots
		nc.Close()
		if err != nil {
			r.countHandshakeFailure(err, false)
			r.logInboundFailure(remote.Addr().String(), err)
		}
		return
	}
	<-r.hsSlots
	if err != nil {
		nc.Close()
		r.countHandshakeFailure(err, false)
		r.logInboundFailure(remote.Addr().String(), err)
		return
	}
	if c.catchUp {
		r.serveCatchUp(c)
		return
	}
	r.runConn(c)
}

func (r *Router) logInboundFailure(ip string, err error) {
	switch {
	case errors.Is(err, errBadSecret):
		r.logOnce(slog.LevelWarn, "in:"+ip, "secret",
			"rejected control connection: it does not know this network's secret (different --password?)", "from", ip)
	case errors.Is(err, errSelf), errors.Is(err, errBusy), r.ctx.Err() != nil:
	default:
		r.logOnce(slog.LevelInfo, "in:"+ip, failureClass(err),
			"rejected control connection: handshake failed", "from", ip, "err", err.Error())
	}
}

// maintainLoop runs the periodic work: expiry, gossip-driven dials and
// anti-entropy.
func (r *Router) maintainLoop() {
	defer r.wg.Done()
	// On the process's beat, with the daemon's other loops (internal/beat).
	tick := beat.NewTicker(r.tun.tick)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick.C:
		}
		r.mu.Lock()
		now := r.now()
		r.expireLocked(now)
		r.retryWantsLocked(now)
		if !now.Before(r.nextHeardAge) {
			r.forgetHeardLocked()
			r.nextHeardAge = now.Add(heardFor)
		}
		r.retryParkedLocked()
		wall := time.Now() // writes are stamped by the real clock, whatever r.now is
		for _, c := range r.active {
			c.keepaliveDueLocked(wall)
		}
		if !r.closed {
			r.gossipDialsLocked(now)
		}
		ae := !now.Before(r.nextAE)
		if ae {
			r.antiEntropyLocked()
			r.nextAE = now.Add(r.jitter(r.tun.antiEntropy))
		}
		r.mu.Unlock()
		if ae {
			r.broadcastTokens(nil)
			r.broadcastEvictions(nil)
			r.secretAntiEntropy()
		}
	}
}
