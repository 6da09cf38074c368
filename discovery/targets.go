package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Targets are the addresses the user asked us to connect to (Connect). Each
// has one goroutine that dials it with exponential backoff (backoffMin
// doubling to backoffMax, ±20 % jitter) until Forget; for redialFastFor
// after a connection of its ends it redials every redialFast instead, so a
// restarted peer is back within a dial of listening. Peers learned through
// gossip are dialled too, at their known endpoint, but only while they are
// in the table and we have no connection to them (gossipDial).

// target is one persistent connection target.
type target struct {
	// Constant after Connect.
	addr   string // normalised HOST:PORT
	host   string
	port   uint16
	ctx    context.Context // cancelled by Forget and Close
	cancel context.CancelFunc
	wake   chan struct{} // cap 1: the peer it reached lost its connection

	// Guarded by Router.mu.
	state    string
	err      string
	peer     key.Public // the peer it reached last; zero until then
	nickname string
	conn     *conn // its established connection, if any
	// busyDegree: peer refused us at its connection limit holding this
	// many neighbours (0: it did not); targetSatisfied while it holds as
	// many and we reach it.
	busyDegree int
}

func (t *target) wakeUp() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// gossipDial is the dial state of a peer learned through gossip. Guarded by
// Router.mu.
type gossipDial struct {
	inFlight bool
	bridge   bool // to an unreachable peer: backoff capped at bridgeBackoffMax
	next     time.Time
	backoff  time.Duration
}

// Connect adds a persistent target, dialled with backoff until forgotten.
// addr is HOST or HOST:PORT (IPv6 literals in brackets when a port is
// given); the port defaults to Config.Port. The host must resolve now.
// Connecting to an existing target is not an error.
func (r *Router) Connect(addr string) error {
	host, port, err := r.parseTarget(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.tun.resolveTimout)
	_, err = resolve(ctx, host)
	cancel()
	if err != nil {
		return err
	}
	norm := net.JoinHostPort(host, strconv.Itoa(int(port)))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if r.targets[norm] != nil {
		return nil
	}
	t := &target{addr: norm, host: host, port: port, state: StateConnecting, wake: make(chan struct{}, 1)}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	r.targets[norm] = t
	r.log.Info("added connection target", "addr", norm)
	if r.started {
		r.startTargetLocked(t)
	}
	return nil
}

// Forget removes a target and closes its connection.
func (r *Router) Forget(addr string) error {
	host, port, err := r.parseTarget(addr)
	if err != nil {
		return ErrUnknownTarget
	}
	norm := net.JoinHostPort(host, strconv.Itoa(int(port)))
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.targets[norm]
	if t == nil {
		return ErrUnknownTarget
	}
	delete(r.targets, norm)
	r.dialChangedLocked() // its peer is no longer covered by it
	delete(r.logged, "target:"+norm)
	t.cancel()
	r.log.Info("forgot connection target", "addr", norm)
	if c := t.conn; c != nil {
		c.close()
		r.removeConnLocked(c, nil) // at once, so Connections no longer shows it
	}
	r.nudge()
	return nil
}

func (r *Router) defaultPort() uint16 {
	if r.cfg.Port != 0 {
		return r.cfg.Port
	}
	return DefaultPort
}

// parseTarget splits and validates HOST[:PORT].
func (r *Router) parseTarget(addr string) (string, uint16, error) {
	s := strings.TrimSpace(addr)
	if s == "" {
		return "", 0, errors.New("empty address")
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		host, portStr = s, ""
		if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
			host = s[1 : len(s)-1]
		}
	}
	port := r.defaultPort()
	if portStr != "" {
		p, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || p == 0 {
			return "", 0, fmt.Errorf("address %q: bad port %q", addr, portStr)
		}
		port = uint16(p)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", 0, fmt.Errorf("address %q: zoned IPv6 addresses are not supported", addr)
		}
		return ip.Unmap().String(), port, nil
	}
	if !validHostname(host) {
		return "", 0, fmt.Errorf("address %q: not an IP address or host name", addr)
	}
	return strings.ToLower(strings.TrimSuffix(host, ".")), port, nil
}

// validHostname checks RFC 1123 host name syntax.
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// resolve returns one address of host, IPv4 preferred.
func resolve(ctx context.Context, host string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip, nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cannot resolve %q: %w", host, err)
	}
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("cannot resolve %q: no addresses", host)
	}
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			return ip.Unmap(), nil
		}
	}
	return ips[0], nil
}

func (r *Router) startTargetLocked(t *target) {
	r.wg.Add(1)
	go r.runTarget(t)
}

// targetSatisfied reports whether t need not dial: another connection to
// the peer t reached last is established, or that peer is reachable through
// the mesh while this peer holds the connections gossip dials aim for, or
// while it is as full as when it last refused us (a peer at its
// connection limit refuses more; connlimit.go). A joiner whose bootstrap
// peer was full and whose other candidates were full too redialled it
// every backoffMax for good, a handshake and a referral of about 45 KB
// each time: in a still mesh of 300 simulated routers, 152 such
// refusals a minute (the peer it reached was not even noted on a refusal).
func (r *Router) targetSatisfied(t *target) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t.peer.IsZero() {
		return false
	}
	if c := r.active[t.peer]; c != nil && c.target != t {
		t.state, t.err, t.nickname = StateEstablished, "", c.hello.Nickname
		return true
	}
	full := t.busyDegree > 0 && r.graph.degree(t.peer) >= t.busyDegree
	if r.rt.reachable(t.peer) && r.active[t.peer] == nil && (len(r.active) >= r.connWant() || full) {
		t.state, t.err = StateEstablished, ""
		return true
	}
	return false
}

func (r *Router) runTarget(t *target) {
	defer r.wg.Done()
	backoff := r.tun.backoffMin
	var lost time.Time // when an established connection of t's last ended
	for {
		for r.targetSatisfied(t) {
			// Woken when its peer's connection ends; rechecked every
			// tick for reachability and our connection count.
			timer := time.NewTimer(r.tun.tick)
			select {
			case <-t.ctx.Done():
				timer.Stop()
				return
			case <-t.wake:
			case <-timer.C:
			}
			timer.Stop()
		}
		if t.ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		t.state = StateConnecting
		r.mu.Unlock()

		established, err := r.dialTarget(t)
		if t.ctx.Err() != nil {
			return
		}
		switch {
		case established:
			backoff = r.tun.backoffMin
			lost = time.Now()
			r.mu.Lock()
			t.state = StateConnecting
			r.mu.Unlock()
		case errors.Is(err, errDuplicate) && r.targetSatisfied(t):
			continue
		case err != nil:
			r.targetFailed(t, err)
			if errors.Is(err, errSelf) {
				backoff = r.tun.backoffMax
			}
		}
		wait := r.jitter(backoff)
		// Fast while we hold fewer connections than gossip dials aim
		// for: a peer that holds them learns through the mesh when the
		// target is back (targetSatisfied), and need not connect to it
		// again. After a partition a part's peers refill from their
		// own part and hold them; redialling every redialFast, each
		// target cut by the partition connected again as soon as it
		// healed, before the bridges' records arrived: 52 of the 56
		// connections of an N=300 heal in simulation (issue 18), each
		// a new version of two records flooded through the mesh.
		fast := !lost.IsZero() && time.Since(lost) < r.tun.redialFastFor && !r.holdsConnWant()
		if fast {
			wait = r.tun.redialFast
		}
		if r.tracing() {
			r.trace(TraceWait, key.Public{}, t.addr, "target redials in "+wait.Round(time.Millisecond).String())
		}
		timer := time.NewTimer(wait)
		select {
		case <-t.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if !fast {
			backoff = min(2*backoff, r.tun.backoffMax)
		}
	}
}

// holdsConnWant reports whether we hold the connections gossip dials aim
// for (connWant).
func (r *Router) holdsConnWant() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.active) >= r.connWant()
}

// dialTarget makes one attempt at t and, if it succeeds, serves the
// connection until it ends.
func (r *Router) dialTarget(t *target) (bool, error) {
	ctx, cancel := context.WithTimeout(t.ctx, r.tun.resolveTimout)
	ip, err := resolve(ctx, t.host)
	cancel()
	if err != nil {
		r.ctr.inc(CtrDialFailed)
		return false, err
	}
	r.mu.Lock()
	peer := t.peer
	r.mu.Unlock()
	r.trace(TraceDial, peer, t.addr, "target")
	c, err := r.dialAddr(t.ctx, netip.AddrPortFrom(ip, t.port), t.addr, t, peer)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	t.peer, t.nickname = c.peer, c.hello.Nickname
	r.mu.Unlock()
	return r.runConn(c)
}

// targetFailed records and logs (once per change) why t failed.
func (r *Router) targetFailed(t *target, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.targets[t.addr] != t {
		return
	}
	t.state, t.err = StateFailed, err.Error()
	var msg string
	switch {
	case errors.Is(err, errRefused):
		msg = "control connection refused by peer: it does not know our network secret (different --password?)"
	case errors.Is(err, errSelf):
		msg = "connection target is this peer itself; not connecting to ourselves"
	case errors.Is(err, errBusy):
		r.logOnceLocked(slog.LevelInfo, "target:"+t.addr, "busy", "control target is at its connection limit; connecting to the peers it told us of instead", "addr", t.addr)
		r.nudge()
		return
	default:
		msg = "cannot connect to control target"
	}
	r.logOnceLocked(slog.LevelWarn, "target:"+t.addr, failureClass(err), msg, "addr", t.addr, "err", err.Error())
	r.nudge()
}

// dialAddr dials ap and runs the handshake; display is the address shown,
// peer the key expected there if known. It tries the secret epochs of
// dialSecrets in turn while the peer refuses them (it does not hold that
// epoch yet, or no longer accepts it).
func (r *Router) dialAddr(ctx context.Context, ap netip.AddrPort, display string, t *target, peer key.Public) (*conn, error) {
	var err error
	for _, e := range r.dialSecrets(peer) {
		dctx, cancel := context.WithTimeout(ctx, r.tun.dialTimeout)
		var nc net.Conn
		nc, err = r.cfg.Network.DialContext(dctx, ap.String())
		cancel()
		if err != nil {
			r.ctr.inc(CtrDialFailed)
			r.trace(TraceFailed, peer, display, err.Error())
			return nil, err
		}
		var c *conn
		c, err = r.establish(ctx, nc, true, display, t, e)
		if err == nil {
			return c, nil
		}
		nc.Close()
		r.countHandshakeFailure(err, true)
		if !errors.Is(err, errBusy) {
			r.trace(TraceFailed, peer, display, err.Error()) // readReferral traces a refusal
		}
		if !errors.Is(err, errRefused) {
			break
		}
	}
	return nil, err
}

// countHandshakeFailure counts a failed handshake by cause.
func (r *Router) countHandshakeFailure(err error, outbound bool) {
	switch {
	case errors.Is(err, errSelf):
		r.ctr.inc(CtrConnSelf)
		return
	case errors.Is(err, errBusy):
		return // counted by readReferral
	case errors.Is(err, context.Canceled), errors.Is(err, net.ErrClosed):
		return
	case errors.Is(err, errTimeout):
		r.ctr.inc(CtrHandshakeTimeout)
	case errors.Is(err, errBadSecret):
		r.ctr.inc(CtrHandshakeBadSecret)
	case errors.Is(err, errRefused):
		r.ctr.inc(CtrHandshakeRefused)
	case errors.Is(err, errOversized):
		r.ctr.inc(CtrFrameOversized)
	}
	r.ctr.inc(CtrHandshakeFailed)
}

func (r *Router) gossipDial(k key.Public, ep netip.AddrPort) {
	defer r.wg.Done()
	established := false
	c, err := r.dialAddr(r.ctx, ep, ep.String(), nil, k)
	if err == nil {
		established, err = r.runConn(c)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil && !established && r.ctx.Err() == nil {
		r.logOnceLocked(slog.LevelDebug, "gossip:"+k.String(), failureClass(err),
			"cannot connect to peer learned through gossip", "peer", k.Name(), "addr", ep.String(), "err", err.Error())
	}
	d := r.dials[k]
	if d == nil {
		return
	}
	d.inFlight = false
	r.dialChangedLocked()
	if established {
		d.backoff = r.tun.backoffMin
	} else {
		d.backoff = min(2*d.backoff, r.tun.backoffMax)
		if d.bridge {
			d.backoff = min(d.backoff, bridgeBackoffMax)
		}
	}
	d.next = r.now().Add(r.jitter(d.backoff))
}
