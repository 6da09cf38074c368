package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// upstreamRecheck is how often the resolv.conf file's mtime is checked.
const upstreamRecheck = 5 * time.Second

// upstreamLogEvery bounds the log lines about one unreachable upstream:
// one when it stops answering, then one a minute while it stays down.
const upstreamLogEvery = time.Minute

// upstreams is the list of resolvers to forward to: a fixed list, or the
// nameservers of a resolv.conf file, re-read when the file changes.
type upstreams struct {
	// Constant after newUpstreams.
	fixed bool
	path  string
	now   func() time.Time
	log   *slog.Logger

	mu sync.Mutex
	// Guarded by mu.
	addrs     []string // "ip:port"
	self      []netip.AddrPort
	selfAny   uint16 // port when listening on an unspecified address
	mtime     time.Time
	checked   time.Time
	loadedErr bool
	down      map[string]*upstreamDown // by "ip:port": upstreams whose last attempt failed
}

// upstreamDown is what is known of an upstream that stopped answering.
type upstreamDown struct {
	logged   time.Time // last log line about it
	failures int       // attempts failed since that line
}

func newUpstreams(list []string, path string, now func() time.Time, log *slog.Logger) *upstreams {
	u := &upstreams{path: path, now: now, log: log, down: map[string]*upstreamDown{}}
	if len(list) > 0 {
		u.fixed = true
		for _, a := range list {
			u.addrs = append(u.addrs, withPort(a, "53"))
		}
	}
	return u
}

func withPort(a, port string) string {
	if _, _, err := net.SplitHostPort(a); err == nil {
		return a
	}
	return net.JoinHostPort(a, port)
}

// exclude keeps the server's own address out of the list: forwarding to
// itself would loop.
func (u *upstreams) exclude(a net.Addr) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if ap.Addr().IsUnspecified() {
		u.selfAny = ap.Port()
	}
	u.self = append(u.self, ap)
}

func (u *upstreams) isSelfLocked(a string) bool {
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return false
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	for _, s := range u.self {
		if s == ap {
			return true
		}
	}
	// Listening on 0.0.0.0 or :: also answers on loopback.
	return u.selfAny != 0 && ap.Port() == u.selfAny && (ap.Addr().IsLoopback() || ap.Addr().IsUnspecified())
}

// list returns the upstreams to try, in order, without this server.
func (u *upstreams) list() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.fixed {
		u.reloadLocked()
	}
	out := make([]string, 0, len(u.addrs))
	for _, a := range u.addrs {
		if !u.isSelfLocked(a) {
			out = append(out, a)
		}
	}
	return out
}

func (u *upstreams) reloadLocked() {
	now := u.now()
	if !u.checked.IsZero() && now.Sub(u.checked) < upstreamRecheck {
		return
	}
	u.checked = now
	fi, err := os.Stat(u.path)
	if err != nil {
		if !u.loadedErr {
			u.log.Warn("no upstream DNS servers: cannot read the resolv.conf file; only weave.local names are answered", "resolv_conf", u.path, "err", err)
			u.loadedErr = true
		}
		u.addrs = nil
		return
	}
	if fi.ModTime().Equal(u.mtime) && u.addrs != nil {
		return
	}
	cc, err := mdns.ClientConfigFromFile(u.path)
	if err != nil {
		if !u.loadedErr {
			u.log.Warn("cannot parse the resolv.conf file for upstream DNS servers", "resolv_conf", u.path, "err", err)
			u.loadedErr = true
		}
		return
	}
	u.loadedErr = false
	u.mtime = fi.ModTime()
	u.addrs = u.addrs[:0]
	for _, s := range cc.Servers {
		u.addrs = append(u.addrs, net.JoinHostPort(s, cc.Port))
	}
	if u.addrs == nil {
		u.addrs = []string{}
	}
}

// failed records a failed attempt at upstream addr and logs it when it is
// news (the upstream answered before) or a minute has passed since the
// last line about it.
func (u *upstreams) failed(addr string, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	d := u.down[addr]
	if d == nil {
		d = &upstreamDown{}
		u.down[addr] = d
	}
	d.failures++
	if !d.logged.IsZero() && now.Sub(d.logged) < upstreamLogEvery {
		return
	}
	u.log.Warn("upstream DNS server not answering; names outside weave.local get SERVFAIL while no upstream answers",
		"upstream", addr, "failed_attempts", d.failures, "err", err)
	d.logged, d.failures = now, 0
}

// answered records that upstream addr answered, and says so once if it
// had been logged as down.
func (u *upstreams) answered(addr string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.down[addr]; !ok {
		return
	}
	delete(u.down, addr)
	u.log.Info("upstream DNS server answers again", "upstream", addr)
}

// forward asks the upstreams in turn and passes the first useful answer
// through unchanged (only cut to the client's UDP size). A truncated UDP
// answer is retried over TCP at the same upstream. SERVFAIL and REFUSED
// move on to the next upstream; if every upstream says so, the last such
// answer is passed through. No answer at all: SERVFAIL.
//
// Each source address has a bucket of forwards (dropped silently beyond
// it) and at most MaxForwards run at once (SERVFAIL at once beyond it), so
// a flood from one container holds a bounded number of sockets and
// goroutines and never starves the table's answers or the daemon.
func (s *Server) forward(w mdns.ResponseWriter, req *mdns.Msg) {
	if !s.fwdLim.allow(remoteAddr(w.RemoteAddr()), s.cfg.Now()) {
		s.c.forwardDroppedRate.Add(1)
		return
	}
	select {
	case s.fwdSem <- struct{}{}:
		defer func() { <-s.fwdSem }()
	default:
		s.c.forwardDroppedBusy.Add(1)
		s.writeRcode(w, req, mdns.RcodeServerFailure)
		return
	}
	tcp := isTCP(w)
	var last *mdns.Msg
	// Network deadlines: real time, whatever clock the table runs on.
	deadline := time.Now().Add(s.cfg.ForwardTimeout)
	ups := s.up.list()
	for i, up := range ups {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), left/time.Duration(len(ups)-i))
		cli := s.udpCli
		if tcp {
			cli = s.tcpCli
		}
		resp, _, err := cli.ExchangeContext(ctx, req, up)
		if err == nil && resp.Truncated && !tcp {
			s.c.forwardTCP.Add(1)
			if r2, _, err2 := s.tcpCli.ExchangeContext(ctx, req, up); err2 == nil {
				resp = r2
			}
		}
		cancel()
		if err != nil {
			s.c.forwardTimeout.Add(1)
			s.up.failed(up, err)
			continue
		}
		s.up.answered(up)
		last = resp
		if resp.Rcode == mdns.RcodeServerFailure || resp.Rcode == mdns.RcodeRefused {
			continue
		}
		break
	}
	if last == nil {
		s.c.forwardFailed.Add(1)
		s.writeRcode(w, req, mdns.RcodeServerFailure)
		return
	}
	s.c.forwarded.Add(1)
	last.Id = req.Id
	if !tcp {
		// The client's own limit: it asked the upstream through us.
		size := mdns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), mdns.MinMsgSize)
		}
		if last.Len() > size {
			last.Truncate(size)
		}
	}
	if err := w.WriteMsg(last); err != nil {
		s.c.writeFailed.Add(1)
	}
}
