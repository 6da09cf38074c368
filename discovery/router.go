package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Config is what a Router needs. Zero values get defaults noted per field.
type Config struct {
	Private key.Private
	// Secret is the secret the network was made with: it names the
	// network (IDOf) and is epoch 0 of the membership secret (secret.go).
	// All zero is allowed and means an open network (no --password):
	// anyone who can reach the port can join.
	Secret   key.Secret
	Nickname string
	// Port is the TCP port to listen on, the UDP port advertised for
	// WireGuard, and the default port of targets given without one.
	// 0: DefaultPort, except with a ListenAddr, where 0 advertises the port
	// actually bound (tests listen on "127.0.0.1:0").
	Port uint16
	// ListenAddr overrides the listen address; "" means ":Port".
	ListenAddr string
	// HostIP is this host's overlay address, advertised in gossip.
	HostIP netip.Addr
	// Range is the overlay range, told to peers admitted with a token.
	Range netip.Prefix
	// DefaultSubnet is the network's default subnet, told to them too
	// when it is not the whole range.
	DefaultSubnet netip.Prefix
	// Tokens is the token registry as SaveTokens saved it last time.
	Tokens []TokenRecord
	// TokensLost says the saved registry was lost or unreadable: until a
	// peer sends its copy, tokens this peer does not know are refused
	// (they may have been revoked or used up meanwhile).
	TokensLost bool
	// SaveTokens, if set, persists the token registry whenever it changes.
	// It is called without router locks held.
	SaveTokens func([]TokenRecord) error
	// Secrets are the secret epochs as SaveSecrets saved them last time
	// (secret.go); empty: epoch 0 is Secret.
	Secrets SecretState
	// SaveSecrets, if set, persists the epochs whenever they change. It is
	// called without router locks held.
	SaveSecrets func(SecretState) error
	// Evictions are the eviction records as SaveEvictions saved them
	// last time (evict.go).
	Evictions []EvictRecord
	// SaveEvictions, if set, persists the eviction records whenever they
	// change. It is called without router locks held.
	SaveEvictions func([]EvictRecord) error
	Logger        *slog.Logger     // nil: discard
	Now           func() time.Time // nil: time.Now
	// ConnLimit bounds this peer's control connections (--conn-limit);
	// 0: DefaultConnLimit. connlimit.go says how peers are chosen.
	ConnLimit int
	// Network carries control connections; nil: the host's TCP stack.
	Network Network
	// Verify checks records' and channel messages' signatures; nil:
	// key.Verify.
	Verify Verifier
	// Shared, if set, is one store of records for the routers of one
	// process (the simulator): see SharedRecords. nil in a daemon.
	Shared *SharedRecords
	// HandshakeTimeout bounds a control handshake and hello (how long a
	// slow or silent peer holds one of the handshake slots); 0: 5 s. A
	// simulation of N peers in one process sets it longer: its peers'
	// handshakes share the few cores N hosts would each have alone.
	HandshakeTimeout time.Duration
	// ReadTimeout closes a control connection on which nothing arrived
	// for this long (a hung peer process whose kernel still answers
	// TCP keepalives); 0: 95 s. A simulation of N peers in one process
	// sets it longer, for the reason HandshakeTimeout says: its pipes
	// have no kernel, and its peers' keepalives wait behind every other
	// peer's work.
	ReadTimeout time.Duration
	// Trace, if set, receives each step of this peer's connection
	// making (trace.go): a harness's timeline. It may be called with
	// the router's lock held, so it must return quickly and must not
	// call the Router.
	Trace func(TraceEvent)
}

// DefaultPort is Weave Net's control port, used when Config.Port is 0.
const DefaultPort = 6783

// Peer is one peer as known from gossip, seen from this router.
type Peer struct {
	Key       key.Public
	Nickname  string
	HostIP    netip.Addr
	Port      uint16
	Attached  []netip.Prefix
	Neighbors []key.Public // peers it reports established connections to
	Reachable bool         // a path of confirmed (two-sided) edges leads there
	Self      bool
	// Endpoint is where to send WireGuard datagrams: the IP of our established
	// control connection to it with its Port, else an IP another peer sees it
	// at. Invalid when unknown.
	Endpoint netip.AddrPort
	Direct   bool // we have an established control connection to it
	// NextHop is the first hop of the route to this peer (the peer itself
	// when Direct and the best path is the direct edge); zero when
	// unreachable or Self.
	NextHop key.Public
	// Version is the version of the peer's record.
	Version uint64
}

// Connection states, as shown by status.
const (
	StateConnecting  = "connecting"
	StateEstablished = "established"
	StateFailed      = "failed"
)

// ConnState describes one control connection or connection attempt.
type ConnState struct {
	Addr     string     // HOST:PORT dialled, or the remote address of an inbound one
	Peer     key.Public // zero until the handshake has completed
	Nickname string
	Outbound bool
	State    string
	Err      string // why the last attempt failed, if it did
}

// ErrUnknownTarget is returned by Forget for an address that is not a target.
var ErrUnknownTarget = errors.New("not a connection target")

// ErrClosed is returned by Start and Connect after Close.
var ErrClosed = errors.New("discovery: router closed")

// tunables are timings, fixed after New; tests shorten them before Start.
type tunables struct {
	tick         time.Duration // maintenance period (expiry, gossip dials)
	antiEntropy  time.Duration // full state to one random neighbor
	expireAfter  time.Duration // unreachable this long: dropped
	tombstoneFor time.Duration // how long an expired version is remembered
	backoffMin   time.Duration
	backoffMax   time.Duration
	// A target whose connection was up redials every redialFast for
	// redialFastFor after losing it, before backing off: a peer that
	// closed its connection is most often restarting (an upgrade), and
	// its containers' remote traffic waits for this dial.
	redialFast    time.Duration
	redialFastFor time.Duration
	keepalive     time.Duration // send a keepalive when idle this long
	// recomputeDelay gathers the records of a flood into one route
	// computation (scheduleRecomputeLocked).
	recomputeDelay time.Duration
	// haveDelay gathers the records a flood brings into one have per
	// neighbour (announceLocked).
	haveDelay time.Duration
	// selfPublishDelay gathers our connection changes into one version
	// of our record (selfNeighborsChangedLocked).
	selfPublishDelay time.Duration
	readTimeout      time.Duration // nothing received this long: close
	writeTimeout     time.Duration
	dialTimeout      time.Duration
	resolveTimout    time.Duration
	handshake        time.Duration // handshake and hello must finish within it
	hsRate           float64       // inbound handshakes per second per IP
	hsBurst          float64
	maxHandshakes    int // inbound handshakes in progress at once
}

func defaultTunables() tunables {
	return tunables{
		tick:          time.Second,
		antiEntropy:   10 * time.Second,
		expireAfter:   time.Minute,
		tombstoneFor:  5 * time.Minute,
		backoffMin:    time.Second,
		backoffMax:    30 * time.Second,
		redialFast:    500 * time.Millisecond,
		redialFastFor: 30 * time.Second,
		// A cut-off peer is noticed by the kernel's TCP keepalive within
		// about 20 s (liveness.go); application keepalives every 30 s
		// catch a hung peer process within readTimeout.
		keepalive:      30 * time.Second,
		recomputeDelay: 50 * time.Millisecond,
		// 200 ms, not 50: a join's ~16 record versions reach a router
		// over a few hundred milliseconds, and each flush is a have
		// to every neighbour and the wants and records they answer;
		// at 100 simulated routers a join cost 75-110 frames per peer
		// at 50 ms, 62-68 at 100 ms, 32-45 at 200 ms and 43-52 at
		// 400 ms, for 0.1-0.15 s more per hop of a flood.
		haveDelay:        200 * time.Millisecond,
		selfPublishDelay: 100 * time.Millisecond,
		readTimeout:      95 * time.Second,
		writeTimeout:     10 * time.Second,
		dialTimeout:      5 * time.Second,
		resolveTimout:    5 * time.Second,
		handshake:        handshakeTimeout,
		hsRate:           5,
		hsBurst:          20,
		maxHandshakes:    64,
	}
}

// Router is the control plane of one peer.
type Router struct {
	// Constant after New.
	cfg     Config
	network NetworkID // IDOf(cfg.Secret): the network's name, never rotated
	priv    key.Private
	self    key.Public
	log     *slog.Logger
	now     func() time.Time
	changes chan struct{}
	ctr     counters
	frames  frameCounts // frames written, by message type (FramesSent)
	tun     tunables
	limiter *rateLimiter // has its own lock

	// Set by Start under mu, constant afterwards.
	ln      net.Listener
	port    uint16 // advertised port
	ctx     context.Context
	cancel  context.CancelFunc
	hsSlots chan struct{} // semaphore: inbound handshakes in progress

	// wg counts every goroutine Start, Connect and the maintenance loop
	// begin; Close waits for it. Add is called only under mu while !closed,
	// or by a goroutine already counted.
	wg sync.WaitGroup

	// mu guards everything below. Lock order: mu before conn.mu; nothing
	// else is held while taking mu. No I/O is done under mu except
	// non-blocking channel sends and net.Conn.Close.
	mu      sync.Mutex
	started bool
	closed  bool
	selfRec Record
	recs    map[key.Public]*entry // every known peer, self included
	tombs   map[key.Public]tomb   // expired peers' last versions
	wants   map[key.Public]*want  // records asked for after a have (announce.go)
	parked  []parkedMsg           // channel messages waiting for a route (parked.go)
	conns   map[*conn]struct{}    // every connection past its handshake
	active  map[key.Public]*conn  // the one established connection per peer
	targets map[string]*target    // by normalised HOST:PORT
	dials   map[key.Public]*gossipDial
	// dialGen counts the changes that can give gossip dials a new
	// candidate (records, routes, connections, a dial's end); dialIdle
	// is the last pass over every record that started nothing
	// (connlimit.go).
	dialGen    uint64
	dialIdle   dialIdle
	dialPasses uint64 // passes over every record (tests)
	// dialSoon: a pass of gossip dials is scheduled off the tick
	// (dialSoonLocked); lastDialSoon is when the last one ran.
	dialSoon     bool
	lastDialSoon time.Time
	// lastShed: when we last closed a connection to take a peer we
	// did not reach (shedLocked).
	lastShed time.Time
	rt       routes
	graph    topoGraph // the edges rt was computed from (topology.go)
	// reachLog: peers whose reachability or connection changed, for
	// ReachChanges (reachlog.go).
	reachLog reachLog
	// viewGen counts changes of the records and of reachability;
	// fingerprint is the Fingerprint computed at generation fpGen.
	viewGen     uint64
	fingerprint viewFingerprint
	// summary: of every record the digest lists, kept as they change
	// (summary.go).
	summary summary
	// unreach: the peers in recs that rt does not reach, kept as routes
	// flip, so expiry and bridge dials read them, not every record.
	unreach map[key.Public]struct{}
	// recomputePending: records changed since rt was computed.
	recomputePending bool
	// publishPending: our connections changed since our record was
	// last published.
	publishPending bool
	// havesPending: haves wait in conns' haves for a flush.
	havesPending bool
	seenAt       map[key.Public]seen // where reachable peers see each peer; stale while seenDirty
	seenDirty    bool                // records or routes changed since seenAt was built
	logged       map[string]string   // log-once: subject → last message logged
	nextAE       time.Time
	nextHeardAge time.Time // when conns' heard sets next age (announce.go)
	nextSecretAd time.Time // the anti-entropy round that next advertises our epoch (rotation.go)

	channelsState // registered channels (guarded by mu) and their stop signal
	evictionState // eviction records and the evicted set (guarded by mu)
	secretsState  // the network secret's epochs (guarded by mu)

	tokens map[TokenID]*TokenRecord // the token registry; guarded by mu
	// tokensUnsynced: the registry was lost (Config.TokensLost) and no
	// peer has sent its copy yet; unknown tokens are refused. Guarded by mu.
	tokensUnsynced bool
	tokensCh       *Channel // constant after New
}

// entry is one peer's record and our view of it. Guarded by Router.mu.
type entry struct {
	rec              Record
	hello            Hello     // from our connection to it, if any
	unreachableSince time.Time // zero while reachable
	// lastIP is the last address a reachable peer reported seeing it at:
	// a peer cut off from the mesh still knows where to dial (connlimit.go).
	// Our own connections do not set it, so a forgotten target is not
	// redialled on its own word.
	lastIP netip.Addr
	// summed is the version the summary counts for it (summary.go).
	summed uint64
}

type tomb struct {
	version uint64
	at      time.Time
}

// New checks cfg and returns a Router that is not yet listening.
func New(cfg Config) (*Router, error) {
	if cfg.Private.IsZero() {
		return nil, errors.New("discovery: no private key")
	}
	if cfg.Port == 0 && cfg.ListenAddr == "" {
		cfg.Port = DefaultPort
	}
	if cfg.ListenAddr != "" {
		if _, _, err := net.SplitHostPort(cfg.ListenAddr); err != nil {
			return nil, fmt.Errorf("discovery: listen address %q: %w", cfg.ListenAddr, err)
		}
	}
	cfg.Nickname = truncateNick(cfg.Nickname)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	switch {
	case cfg.ConnLimit == 0:
		cfg.ConnLimit = DefaultConnLimit
	case cfg.ConnLimit < 0 || cfg.ConnLimit > MaxNeighbors:
		return nil, fmt.Errorf("discovery: connection limit %d: 1-%d", cfg.ConnLimit, MaxNeighbors)
	}
	if cfg.HandshakeTimeout < 0 || cfg.ReadTimeout < 0 {
		return nil, fmt.Errorf("discovery: negative timeout (handshake %v, read %v)", cfg.HandshakeTimeout, cfg.ReadTimeout)
	}
	if cfg.Network == nil {
		cfg.Network = tcpNetwork{}
	}
	if cfg.Verify == nil {
		cfg.Verify = key.Verify
	}
	r := &Router{
		cfg:     cfg,
		network: IDOf(cfg.Secret),
		priv:    cfg.Private,
		self:    cfg.Private.Public(),
		log:     log,
		now:     now,
		changes: make(chan struct{}, 1),
		ctr:     newCounters(),
		tun:     defaultTunables(),
		recs:    map[key.Public]*entry{},
		tombs:   map[key.Public]tomb{},
		wants:   map[key.Public]*want{},
		conns:   map[*conn]struct{}{},
		active:  map[key.Public]*conn{},
		targets: map[string]*target{},
		dials:   map[key.Public]*gossipDial{},
		unreach: map[key.Public]struct{}{},
		logged:  map[string]string{},
	}
	if cfg.HandshakeTimeout > 0 {
		r.tun.handshake = cfg.HandshakeTimeout
	}
	if cfg.ReadTimeout > 0 {
		r.tun.readTimeout = cfg.ReadTimeout
	}
	r.channels = map[string]*Channel{}
	r.chanDone = make(chan struct{})
	r.tokens = map[TokenID]*TokenRecord{}
	if err := r.openTokens(); err != nil {
		return nil, err
	}
	if err := r.openEvictions(); err != nil {
		return nil, err
	}
	if err := r.openSecrets(); err != nil {
		return nil, err
	}
	r.selfRec = Record{
		Key:      r.self,
		Version:  uint64(now().UnixNano()),
		Nickname: cfg.Nickname,
		HostIP:   cfg.HostIP,
		Port:     cfg.Port,
	}
	r.selfRec.Sign(r.priv)
	r.recs[r.self] = &entry{rec: r.selfRec}
	r.graphSetLocked(r.self)
	r.rt = noRoutes(r.self)
	return r, nil
}

// Start listens on the TCP port and starts dialling, gossip and anti-entropy.
func (r *Router) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if r.started {
		return errors.New("discovery: already started")
	}
	addr := r.cfg.ListenAddr
	if addr == "" {
		addr = net.JoinHostPort("", strconv.Itoa(int(r.cfg.Port)))
	}
	ln, err := r.cfg.Network.Listen(addr)
	if err != nil {
		return fmt.Errorf("discovery: listening for control connections: %w", err)
	}
	r.ln = ln
	r.port = r.cfg.Port
	if r.port == 0 {
		r.port = addrPortOf(ln.Addr()).Port()
	}
	r.selfRec.Port = r.port
	r.bumpSelfLocked()
	r.limiter = newRateLimiter(r.tun.hsRate, r.tun.hsBurst)
	r.hsSlots = make(chan struct{}, r.tun.maxHandshakes)
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.started = true
	r.nextAE = r.now().Add(r.jitter(r.tun.antiEntropy))
	r.wg.Add(2)
	go r.acceptLoop()
	go r.maintainLoop()
	for _, t := range r.targets {
		r.startTargetLocked(t)
	}
	r.log.Info("listening for control connections", "addr", ln.Addr().String(), "peer", r.self.Name())
	return nil
}

// Addr is the address the router listens on; nil before Start.
func (r *Router) Addr() net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln == nil {
		return nil
	}
	return r.ln.Addr()
}

// Self is this router's public key.
func (r *Router) Self() key.Public { return r.self }

// Close stops everything Start began and closes every connection. It returns
// when every goroutine of the router has exited.
func (r *Router) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.wg.Wait()
		return nil
	}
	r.closed = true
	if r.cancel != nil {
		r.cancel()
	}
	if r.ln != nil {
		r.ln.Close()
	}
	for c := range r.conns {
		c.close()
	}
	for _, t := range r.targets {
		t.cancel()
	}
	r.chanStop.Do(func() { close(r.chanDone) })
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// SetAttached publishes the overlay prefixes attached on this host. Invalid
// prefixes are ignored and at most MaxAttached are published.
func (r *Router) SetAttached(prefixes []netip.Prefix) {
	ps := validPrefixes(prefixes)
	if len(ps) > MaxAttached {
		r.log.Warn("too many attached prefixes to publish; publishing the first ones", "count", len(ps), "max", MaxAttached)
		ps = ps[:MaxAttached]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Equal(ps, r.selfRec.Attached) {
		return
	}
	r.selfRec.Attached = ps
	r.bumpSelfLocked()
	r.floodLocked(nil, []*Record{r.copySelf()})
	r.nudge()
}

// SetHostIP changes the overlay address this host advertises (the daemon
// learns it from IPAM after the router started, on a joiner's first start).
func (r *Router) SetHostIP(ip netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.selfRec.HostIP == ip {
		return
	}
	r.selfRec.HostIP = ip
	r.bumpSelfLocked()
	r.floodLocked(nil, []*Record{r.copySelf()})
	r.nudge()
}

// Changes is nudged (capacity 1, never blocks the router) whenever Peers may
// have changed.
func (r *Router) Changes() <-chan struct{} { return r.changes }

func (r *Router) nudge() {
	select {
	case r.changes <- struct{}{}:
	default:
	}
}

// Peers returns a snapshot of every known peer, self first.
func (r *Router) Peers() []Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	out := make([]Peer, 0, len(r.recs))
	for k, e := range r.recs {
		p := Peer{
			Key:      k,
			Nickname: e.rec.Nickname,
			HostIP:   e.rec.HostIP,
			Port:     e.rec.Port,
			Attached: slices.Clone(e.rec.Attached),
			Version:  e.rec.Version,
			Self:     k == r.self,
		}
		for _, n := range e.rec.Neighbors {
			if n.Established {
				p.Neighbors = append(p.Neighbors, n.Key)
			}
		}
		p.Reachable = r.rt.reachable(k)
		p.NextHop, _ = r.rt.nextHop(k)
		if !p.Self {
			p.Endpoint, p.Direct = r.endpointLocked(k, e)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Peer) int {
		if a.Self != b.Self {
			if a.Self {
				return -1
			}
			return 1
		}
		return cmpKey(a.Key, b.Key)
	})
	return out
}

// Reach is what Reachable says of a reachable peer.
type Reach struct {
	Key     key.Public
	Version uint64 // of its record
	Direct  bool   // we have an established control connection to it
}

// Reachable returns every reachable peer, self included, unsorted: what
// loops that follow membership need of Peers, without its copies of every
// record (at a thousand peers, Peers allocates over half a megabyte).
func (r *Router) Reachable() []Reach {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	out := make([]Reach, 0, r.rt.count())
	for k := range r.rt.all() {
		rc := Reach{Key: k, Direct: r.active[k] != nil}
		if e := r.recs[k]; e != nil {
			rc.Version = e.rec.Version
		}
		out = append(out, rc)
	}
	return out
}

// ReachOf is Reachable's entry for k alone: whether k is reachable, and
// the version of its record held here (a harness's poll of one peer over
// a whole mesh, without N copies of every reachable set).
func (r *Router) ReachOf(k key.Public) (Reach, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	if !r.rt.reachable(k) && k != r.self {
		return Reach{}, false
	}
	rc := Reach{Key: k, Direct: r.active[k] != nil}
	if e := r.recs[k]; e != nil {
		rc.Version = e.rec.Version
	}
	return rc, true
}

// endpointLocked chooses where to reach peer k: the remote IP of our
// established connection to it, else the IP reported by the reachable peer
// nearest to us (ties: smaller key), always with k's advertised port.
func (r *Router) endpointLocked(k key.Public, e *entry) (netip.AddrPort, bool) {
	port := e.rec.Port
	if port == 0 {
		port = e.hello.Port
	}
	if c := r.active[k]; c != nil {
		if port == 0 {
			port = c.hello.Port
		}
		return netip.AddrPortFrom(c.remote.Addr(), port), true
	}
	if port == 0 {
		return netip.AddrPort{}, false
	}
	r.freshSeenAtLocked()
	s, ok := r.seenAt[k]
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(s.ip, port), false
}

// seen is the address another reachable peer sees a peer at.
type seen struct {
	ip   netip.Addr
	hops int        // hops from us to the peer that sees it
	by   key.Public // that peer
}

// noteSeenLocked takes the addresses rec's owner sees its neighbours at as
// their last known addresses (lastIP, what gossip dials use), as each
// record arrives: O(neighbours) per record, where rebuilding seenAt for
// each dial pass read every record's neighbours. The owner's own address
// comes from its neighbours' records, which may have come first.
func (r *Router) noteSeenLocked(rec *Record) {
	usable := func(n Neighbor) bool { return n.Established && n.IP.IsValid() && !n.IP.IsUnspecified() }
	for _, n := range rec.Neighbors {
		if n.Key == rec.Key || n.Key == r.self || !usable(n) {
			continue
		}
		if e := r.recs[n.Key]; e != nil {
			e.lastIP = n.IP.Unmap()
		}
	}
	e := r.recs[rec.Key]
	if e == nil || e.lastIP.IsValid() || rec.Key == r.self {
		return
	}
	for _, n := range rec.Neighbors {
		ne := r.recs[n.Key]
		if !n.Established || ne == nil || n.Key == r.self {
			continue
		}
		for _, m := range ne.rec.Neighbors {
			if m.Key == rec.Key && usable(m) {
				e.lastIP = m.IP.Unmap()
				return
			}
		}
	}
}

// freshSeenAtLocked rebuilds r.seenAt (and the lastIP it sets) if records
// or routes changed since it was built. It is built when read, not on
// every change: a flood brings many record versions, and every rebuild
// reads every neighbour of every record (at a thousand simulated peers,
// the largest share of a recomputation).
func (r *Router) freshSeenAtLocked() {
	if r.seenDirty {
		r.indexSeenAtLocked()
	}
}

// indexSeenAtLocked rebuilds r.seenAt from the records of reachable peers,
// in one pass over their neighbor lists (Peers and the gossip dials read it
// for every peer; a scan per peer was O(peers²)). For each peer the report
// of the reachable peer nearest to us wins, ties to the smaller key.
func (r *Router) indexSeenAtLocked() {
	r.seenDirty = false
	idx := make(map[key.Public]seen, len(r.seenAt))
	for rk, re := range r.recs {
		if rk == r.self {
			continue
		}
		h, ok := r.rt.hopCount(rk)
		if !ok {
			continue
		}
		for _, n := range re.rec.Neighbors {
			if n.Key == rk || !n.Established || !n.IP.IsValid() || n.IP.IsUnspecified() {
				continue
			}
			if b, ok := idx[n.Key]; ok && (b.hops < h || b.hops == h && b.by.Less(rk)) {
				continue
			}
			idx[n.Key] = seen{ip: n.IP.Unmap(), hops: h, by: rk}
		}
	}
	r.seenAt = idx
	for k, sn := range idx {
		if e := r.recs[k]; e != nil {
			e.lastIP = sn.ip
		}
	}
}

// NextHop is the first hop on the route to dst: dst itself when the best
// path is our direct edge, another peer to relay through, or false when dst
// is unreachable (or is ourselves). The route A→C is the reverse of C→A.
func (r *Router) NextHop(dst key.Public) (key.Public, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	k, ok := r.rt.nextHop(dst)
	return k, ok
}

// Route is the whole best path from us to dst, both ends included; nil when
// dst is unreachable.
func (r *Router) Route(dst key.Public) []key.Public {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.freshLocked()
	return r.rt.path(dst)
}

// Connections returns a snapshot of control connections and targets: one
// ConnState per target, then one per established connection that no target
// accounts for.
func (r *Router) Connections() []ConnState {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ConnState
	covered := map[*conn]bool{}
	for _, t := range r.targets {
		cs := ConnState{Addr: t.addr, Outbound: true, State: t.state, Err: t.err, Peer: t.peer, Nickname: t.nickname}
		if c := r.active[t.peer]; !t.peer.IsZero() && c != nil && cs.State != StateFailed {
			cs.State, cs.Err, cs.Nickname = StateEstablished, "", c.hello.Nickname
			covered[c] = true
		}
		out = append(out, cs)
	}
	slices.SortFunc(out, func(a, b ConnState) int { return cmp.Compare(a.Addr, b.Addr) })
	n := len(out)
	for _, c := range r.active {
		if covered[c] {
			continue
		}
		out = append(out, ConnState{
			Addr:     c.addr,
			Peer:     c.peer,
			Nickname: c.hello.Nickname,
			Outbound: c.outbound,
			State:    StateEstablished,
		})
	}
	slices.SortFunc(out[n:], func(a, b ConnState) int { return cmp.Compare(a.Addr, b.Addr) })
	return out
}

// Counters returns event and drop counters by name (see counters.go).
func (r *Router) Counters() map[string]uint64 { return r.ctr.snapshot() }

// Counter is one of Counters (0 for a name it does not have), without a
// copy of them all: the simulator polls a few counters of every router
// several times a second, and a map of every counter of each of N
// routers per poll was O(N) allocations a poll.
func (r *Router) Counter(name string) uint64 {
	if v := r.ctr[name]; v != nil {
		return v.Load()
	}
	return 0
}

// logOnceLocked logs msg at level unless the same condition (msg and
// detail) was the last one logged for subject; repeats go to Debug. Subjects
// are e.g. a remote IP or a target address, so a failing retry loop logs one
// line per change of error, not one per attempt.
func (r *Router) logOnceLocked(level slog.Level, subject, detail, msg string, attrs ...any) {
	cond := msg + "\x00" + detail
	if r.logged[subject] == cond {
		r.log.Debug(msg, attrs...)
		return
	}
	if len(r.logged) >= 4096 {
		clear(r.logged)
	}
	r.logged[subject] = cond
	r.log.Log(context.Background(), level, msg, attrs...)
}

func (r *Router) logOnce(level slog.Level, subject, detail, msg string, attrs ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logOnceLocked(level, subject, detail, msg, attrs...)
}

// jitter returns d ± 20 %.
func (r *Router) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d*8/10 + rand.N(d*4/10+1)
}
