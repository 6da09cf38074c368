package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/netutil"

	"github.com/weavewg/weavewg/internal/beat"
	"github.com/weavewg/weavewg/types/key"
)

// Transport carries the name table's gossip (the "dns" channel).
//
// Broadcast sends msg to every other peer (directly or along routes). It must
// not block for long and must not call back into the Server synchronously;
// it may keep msg. Messages are at most MaxMessageLen bytes.
type Transport interface {
	Broadcast(msg []byte)
}

// Defaults for Config.
const (
	DefaultDomain         = "weave.local."
	DefaultTTL            = time.Second
	DefaultResolvConf     = "/etc/resolv.conf"
	DefaultForwardTimeout = 2 * time.Second
	DefaultGossipInterval = 10 * time.Second
)

// Config configures a Server. Zero values take the defaults.
type Config struct {
	// Self is this peer's key: the owner of the entries it adds.
	Self key.Public
	// ListenAddr is the UDP and TCP address to answer on, e.g. the host's
	// overlay address "10.32.0.1:53". Empty: no listener (the table still
	// gossips, Lookup still works).
	ListenAddr string
	// Domain is the zone answered from the table (default "weave.local.").
	Domain string
	// TTL of answers from the table, whole seconds (default 1 s).
	TTL time.Duration
	// OverlayRange is the range whose in-addr.arpa names this server is
	// authoritative for (NXDOMAIN for unknown addresses). Zero: only
	// addresses in the table are answered; other PTR questions are forwarded.
	OverlayRange netip.Prefix
	// Upstreams, "ip" or "ip:port", overrides ResolvConf.
	Upstreams []string
	// ResolvConf is read for upstream servers when Upstreams is empty
	// (default /etc/resolv.conf); it is re-read when it changes.
	ResolvConf string
	// ForwardTimeout bounds each attempt at one upstream (default 2 s).
	ForwardTimeout time.Duration
	// Clients are the source addresses answered (the overlay range, for
	// the daemon); queries from elsewhere are dropped without an answer
	// (dns_dropped_not_client). Empty: everyone.
	Clients []netip.Prefix
	// MaxForwards bounds forwards in flight (default DefaultMaxForwards).
	MaxForwards int
	// ForwardRate and ForwardBurst bound each source address's forwards
	// (default DefaultForwardRate per second, burst DefaultForwardBurst).
	ForwardRate  float64
	ForwardBurst int
	// Transport for gossip; may be set later with SetTransport.
	Transport Transport
	// GossipInterval is the period of tombstone expiry, of the digest
	// round and of anti-entropy where digests cannot repair (broadcasting
	// our own entries: see Tick) (default 10 s; negative: no loop, the
	// caller drives Tick and DigestTick).
	GossipInterval time.Duration
	// Relay: rebroadcast gossip news. Needed only when Transport.Broadcast
	// reaches direct neighbours only.
	Relay bool
	// Table tunes expiry of tombstones and of unreachable peers' entries.
	Table TableOptions
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger logs with fields; nil is silent.
	Logger *slog.Logger
}

// Server is one host's DNS server and name table.
type Server struct {
	// Constant after New.
	cfg    Config
	domain string // lower case, fully qualified, "weave.local."
	ttl    uint32
	table  *Table
	soa    *mdns.SOA
	opt    *mdns.OPT
	up     *upstreams
	udpCli *mdns.Client
	tcpCli *mdns.Client
	fwdSem chan struct{}  // a slot per forward in flight
	fwdLim *sourceLimiter // forwards per source address

	c         counters
	transport atomic.Pointer[transportBox]
	replies   sync.Pool // of *reply

	mu sync.Mutex
	// Guarded by mu.
	started, closed bool
	udpSrv, tcpSrv  *mdns.Server
	udpAddr         net.Addr
	tcpAddr         net.Addr
	stop            chan struct{}
	wg              sync.WaitGroup
	// reach is the reachable set (SetReachable, PeersChanged).
	reach peerSet
	// pulled is when each owner was last pulled, backTo when each peer
	// was last sent a digest back, lastDigest when the last round's
	// digest was sent and quick how many quick rounds are left
	// (digest.go).
	pulled     map[key.Public]time.Time
	backTo     map[key.Public]time.Time
	lastDigest time.Time
	quick      int
	// neighbours are the peers we hold a control connection to
	// (SetNeighbours), in the order quick rounds take them from next on.
	neighbours []key.Public
	next       int
	// states holds each peer's state taken since the last DigestTick
	// (noteState, returnStale).
	states map[key.Public]*takenState
}

// peerSet is a set of peers that picks a random member in O(1).
type peerSet struct {
	keys []key.Public
	pos  map[key.Public]int
}

func (p *peerSet) len() int { return len(p.keys) }

func (p *peerSet) has(k key.Public) bool { _, ok := p.pos[k]; return ok }

func (p *peerSet) add(k key.Public) {
	if p.has(k) {
		return
	}
	if p.pos == nil {
		p.pos = map[key.Public]int{}
	}
	p.pos[k] = len(p.keys)
	p.keys = append(p.keys, k)
}

func (p *peerSet) remove(k key.Public) {
	i, ok := p.pos[k]
	if !ok {
		return
	}
	last := p.keys[len(p.keys)-1]
	p.keys[i] = last
	p.pos[last] = i
	p.keys = p.keys[:len(p.keys)-1]
	delete(p.pos, k)
}

// random returns a member chosen at random; false if p is empty.
func (p *peerSet) random() (key.Public, bool) {
	if len(p.keys) == 0 {
		return key.Public{}, false
	}
	return p.keys[rand.IntN(len(p.keys))], true
}

type transportBox struct{ t Transport }

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("dns: server closed")

// New returns a Server; Start makes it listen and gossip.
func New(cfg Config) (*Server, error) {
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	domain := mdns.Fqdn(strings.ToLower(cfg.Domain))
	if _, ok := mdns.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("dns: bad domain %q", cfg.Domain)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.MaxForwards <= 0 {
		cfg.MaxForwards = DefaultMaxForwards
	}
	if cfg.ForwardRate <= 0 {
		cfg.ForwardRate = DefaultForwardRate
	}
	if cfg.ForwardBurst <= 0 {
		cfg.ForwardBurst = DefaultForwardBurst
	}
	if cfg.GossipInterval == 0 {
		cfg.GossipInterval = DefaultGossipInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ttl := uint32(max(cfg.TTL, 0) / time.Second)
	s := &Server{
		cfg:    cfg,
		domain: domain,
		ttl:    ttl,
		table:  NewTable(cfg.Self, cfg.Table),
		soa: &mdns.SOA{
			Hdr:     mdns.RR_Header{Name: domain, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttl},
			Ns:      "ns." + domain,
			Mbox:    "hostmaster." + domain,
			Serial:  1,
			Refresh: 3600,
			Retry:   600,
			Expire:  86400,
			Minttl:  ttl, // negative answers are cached for the TTL (RFC 2308)
		},
		opt:    &mdns.OPT{Hdr: mdns.RR_Header{Name: ".", Rrtype: mdns.TypeOPT, Class: ednsSize}},
		udpCli: &mdns.Client{Net: "udp", Timeout: cfg.ForwardTimeout},
		tcpCli: &mdns.Client{Net: "tcp", Timeout: cfg.ForwardTimeout},
		fwdSem: make(chan struct{}, cfg.MaxForwards),
		fwdLim: newSourceLimiter(cfg.ForwardRate, cfg.ForwardBurst),
	}
	s.up = newUpstreams(cfg.Upstreams, cfg.ResolvConf, cfg.Now, cfg.Logger)
	if cfg.Transport != nil {
		s.transport.Store(&transportBox{cfg.Transport})
	}
	s.replies.New = func() any { return new(reply) }
	s.lastDigest = cfg.Now()
	return s, nil
}

// Start listens on ListenAddr (UDP and TCP) and starts the gossip loop.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.started {
		return errors.New("dns: server already started")
	}
	if s.cfg.ListenAddr != "" {
		if err := s.listenLocked(s.cfg.ListenAddr); err != nil {
			return err
		}
	}
	s.stop = make(chan struct{})
	if s.cfg.GossipInterval > 0 {
		s.wg.Add(1)
		go s.loop(s.stop)
	}
	s.started = true
	return nil
}

// Listen answers on addr from now on, instead of where it answered before
// (if anywhere): the daemon learns the host's overlay address, or a new
// one, while the name table must already follow gossip.
func (s *Server) Listen(addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for _, srv := range []*mdns.Server{s.udpSrv, s.tcpSrv} {
		if srv != nil {
			srv.Shutdown()
		}
	}
	s.udpSrv, s.tcpSrv = nil, nil
	return s.listenLocked(addr)
}

// listenLocked opens UDP and TCP on addr and serves them.
func (s *Server) listenLocked(addr string) error {
	pc, ln, err := listen(addr)
	if err != nil {
		return err
	}
	s.udpAddr, s.tcpAddr = pc.LocalAddr(), ln.Addr()
	s.up.exclude(s.udpAddr)
	// Start returns once both serve: a Shutdown (Close) that comes
	// before ActivateAndServe has started is refused by miekg/dns, and
	// the server would then run, and Close wait, forever.
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	s.udpSrv = s.newServer()
	s.udpSrv.PacketConn = pc
	s.udpSrv.NotifyStartedFunc = notify
	s.tcpSrv = s.newServer()
	s.tcpSrv.Listener = netutil.LimitListener(ln, maxTCPConns)
	s.tcpSrv.NotifyStartedFunc = notify
	failed := make(chan struct{}, 2)
	for _, srv := range []*mdns.Server{s.udpSrv, s.tcpSrv} {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil && !errors.Is(err, net.ErrClosed) {
				s.cfg.Logger.Error("DNS server stopped serving", "addr", addr, "err", err)
			}
			failed <- struct{}{}
		}()
	}
	for range 2 {
		select {
		case <-started:
		case <-failed: // returned before it started; nothing to wait for
		}
	}
	return nil
}

func (s *Server) newServer() *mdns.Server {
	return &mdns.Server{
		Handler: s,
		// Read UDP queries up to this size; longer ones arrive cut and fail
		// to parse (FORMERR). Real queries are far smaller.
		UDPSize:        maxUDPQuery,
		MsgAcceptFunc:  s.accept,
		MsgInvalidFunc: func([]byte, error) { s.c.malformed.Add(1) },
	}
}

// listen opens UDP and TCP on the same address; with port 0 it picks a
// port free for both.
func listen(addr string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 10 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen udp: %w", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			break
		}
	}
	return nil, nil, fmt.Errorf("dns: listen tcp: %w", lastErr)
}

// Addr returns the UDP address the server listens on (nil before Start or
// without ListenAddr). TCP listens on the same address.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.udpAddr
}

// Close stops the listeners and the gossip loop and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.stop != nil {
		close(s.stop)
	}
	for _, srv := range []*mdns.Server{s.udpSrv, s.tcpSrv} {
		if srv != nil {
			srv.Shutdown()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) loop(stop chan struct{}) {
	defer s.wg.Done()
	t := beat.NewTicker(s.cfg.GossipInterval) // with the daemon's other loops
	defer t.Stop()
	// A digest to one peer every interval, whatever the size, and every
	// second for a few seconds after a change (DigestTick, digest.go): it
	// repairs what the spread rounds would take minutes to. On the
	// process's beat: an idle daemon's one-second loops wake it once.
	d := beat.NewTicker(min(quickEvery, s.cfg.GossipInterval))
	defer d.Stop()
	for {
		select {
		case <-stop:
			return
		case <-d.C:
			s.DigestTick()
			continue
		case <-t.C:
			s.Tick()
		}
		// A round costs a message to every peer: past beat.SpreadPeers
		// peers it comes less often, so an idle host's repair traffic
		// stays flat as the mesh grows (issue 18).
		s.mu.Lock()
		peers := s.reach.len()
		s.mu.Unlock()
		t.Reset(beat.Spread(s.cfg.GossipInterval, peers))
	}
}

// Tick expires old tombstones and unreachable peers' entries and, when
// digests cannot repair what a peer lacks of ours, broadcasts this peer's
// own entries, tombstones included (anti-entropy). Start calls it every
// GossipInterval, spread with the peer count.
//
// With a transport that sends to one peer (Sender) and our entries few
// enough that every update carries them all (fullUpdateMax), a peer that
// holds our newest version holds all of our entries, so the digests
// (digest.go) find every loss within seconds and the round broadcasts
// nothing: at N=1,000 its state, one every N seconds from each of N peers,
// was a state a second at every peer, 26 in the 20 s after a join, and
// about four of an idle peer's 5.5 frames a second (issue 18).
func (s *Server) Tick() {
	s.table.Expire(s.cfg.Now())
	own := s.table.ownEntries()
	if _, ok := s.sender(); ok && len(own) <= fullUpdateMax {
		return
	}
	// Only our own entries: receivers take no others (HandleMessage), so
	// the rest of the table was N² bytes per round for nothing. Copies of
	// another peer's entries reach it when it arrives (SetReachable).
	s.c.roundSent.Add(1)
	s.broadcast(MsgState, own)
}

// fullUpdateMax is the most entries (tombstones included) this peer may
// own for its updates to carry all of them. An update carrying only what
// changed leaves a peer that lost an earlier one with our newest version
// and not the lost entry, which digests of newest versions do not see;
// carrying all makes an update cost the owner's entries, so past this
// (64 entries, about 5 KB a message) updates carry the change alone and
// the round's broadcast (Tick) repairs, as before.
const fullUpdateMax = 64

// broadcastOwn broadcasts a change of our own entries: changed, or all our
// entries when they are few enough (fullUpdateMax; see Tick).
func (s *Server) broadcastOwn(changed []Entry) {
	if len(changed) == 0 {
		return
	}
	if own := s.table.ownEntries(); len(own) <= fullUpdateMax {
		changed = own
	}
	s.broadcast(MsgUpdate, changed)
}

// SetTransport sets (or replaces) the gossip transport.
func (s *Server) SetTransport(t Transport) {
	if t == nil {
		s.transport.Store(nil)
		return
	}
	s.transport.Store(&transportBox{t})
}

func (s *Server) broadcast(typ byte, entries []Entry) {
	if len(entries) == 0 {
		return
	}
	tb := s.transport.Load()
	if tb == nil {
		return
	}
	for _, m := range AppendMessages(typ, entries) {
		tb.t.Broadcast(m)
		s.c.gossipSent.Add(1)
	}
}

// StateMessages encodes the whole table (tombstones included) as state
// messages, for a transport that sends anti-entropy itself (e.g. to a new
// neighbour).
func (s *Server) StateMessages() [][]byte { return AppendMessages(MsgState, s.table.All()) }

// MaxVersionAhead bounds how far an entry's version (its owner's clock in
// unix nanoseconds) may be ahead of ours; further entries are dropped
// (dns_gossip_future), so no entry can win every later change of its name.
const MaxVersionAhead = time.Hour

// HandleMessage merges a gossip message from peer from, the authenticated
// originator of the message (discovery checks its signature end to end).
// Only entries owned by from are taken — a peer speaks for its own names
// only; each owner gossips its own entries, so none depends on a relay —
// and copies of this peer's own entries, which its own state overrides.
// Other entries are dropped (dns_gossip_not_owner), as are entries more
// than MaxVersionAhead ahead of our clock (dns_gossip_future). A malformed
// message is counted and returns an error wrapping ErrMalformed; an unknown
// version or type is counted, ignored and returns ErrVersion or
// ErrUnknownType.
func (s *Server) HandleMessage(from key.Public, msg []byte) error {
	if isRepair(msg) {
		return s.handleRepair(from, msg)
	}
	typ, entries, err := ParseMessage(msg)
	switch {
	case errors.Is(err, ErrVersion), errors.Is(err, ErrUnknownType):
		s.c.gossipUnknown.Add(1)
		return err
	case err != nil:
		s.c.gossipMalformed.Add(1)
		return fmt.Errorf("dns: gossip from %s: %w", from.Name(), err)
	}
	if typ == MsgState {
		s.c.gossipStateIn.Add(1)
	} else {
		s.c.gossipUpdatesIn.Add(1)
	}
	now := s.cfg.Now()
	limit := uint64(now.Add(MaxVersionAhead).UnixNano())
	kept := entries[:0]
	for _, e := range entries {
		switch {
		case e.Owner != from && e.Owner != s.cfg.Self:
			s.c.gossipNotOwner.Add(1)
		case e.Version > limit:
			s.c.gossipFuture.Add(1)
		default:
			kept = append(kept, e)
		}
	}
	news, replies := s.table.Merge(kept, now)
	if len(news) > 0 || len(replies) > 0 {
		s.changed() // in case a copy of it was lost on the way elsewhere
	}
	if typ == MsgState && from != s.cfg.Self {
		s.noteState(from, kept, len(entries) > 0)
	}
	if len(news) > 0 && typ == MsgState {
		// News in answer to our pull: a copy that was lost on its way
		// (or is still on it), repaired.
		s.mu.Lock()
		t, pulled := s.pulled[from]
		s.mu.Unlock()
		if pulled && now.Sub(t) < pullEvery {
			s.c.pullRepaired.Add(uint64(len(news)))
		}
	}
	s.broadcastOwn(replies)
	if s.cfg.Relay {
		s.broadcast(MsgUpdate, news)
	}
	return nil
}

// AddEntry makes name (as typed: "web", "web.weave.local.") resolve to addr
// for this peer's container origin ("" for names added by hand), and
// broadcasts the change. Adding an entry that is already live does nothing.
func (s *Server) AddEntry(name string, addr netip.Addr, origin string) error {
	n, err := CanonicalName(name, s.domain)
	if err != nil {
		return err
	}
	up, err := s.table.Add(n, addr.Unmap(), origin, s.cfg.Now())
	if err != nil {
		return err
	}
	if len(up) > 0 {
		s.changed()
	}
	s.broadcastOwn(up)
	return nil
}

// RemoveEntries withdraws this peer's entries that match (name "", an
// invalid addr and origin "" match anything; so RemoveEntries("", {}, id)
// withdraws a container's names on detach) and broadcasts the tombstones.
// It returns how many entries it withdrew.
func (s *Server) RemoveEntries(name string, addr netip.Addr, origin string) (int, error) {
	if name != "" {
		n, err := CanonicalName(name, s.domain)
		if err != nil {
			return 0, err
		}
		name = n
	}
	if addr.IsValid() {
		addr = addr.Unmap()
	}
	ts := s.table.Remove(name, addr, origin, s.cfg.Now())
	if len(ts) > 0 {
		s.changed()
	}
	s.broadcastOwn(ts)
	return len(ts), nil
}

// SetReachable tells the table which peers are reachable now: entries of
// every other peer are no longer answered (and deleted after
// TableOptions.PeerExpiry). Call it whenever the set changes.
//
// A peer that became reachable (joined, restarted, or back from a
// partition) is sent at once what it can take (welcome) rather than left
// to the next anti-entropy round: a restarted peer holds no table, and
// until it gets one its server answers NXDOMAIN for every other peer's
// names.
func (s *Server) SetReachable(peers []key.Public) {
	s.table.SetReachable(peers, s.cfg.Now())
	var now peerSet
	var arrived []key.Public
	s.mu.Lock()
	for _, p := range peers {
		if p != s.cfg.Self && !s.reach.has(p) && !now.has(p) {
			arrived = append(arrived, p)
		}
		if p != s.cfg.Self {
			now.add(p)
		}
	}
	s.reach = now
	if len(arrived) > 0 {
		s.quick = quickRounds
	}
	s.mu.Unlock()
	s.welcome(arrived)
}

// PeersChanged is SetReachable for a change of a few peers: up became
// reachable, down unreachable, every other peer is as it was. Arrivals
// are sent what they can take, as SetReachable sends them. A loop that
// follows reachability (the daemon's reconcile) calls SetReachable once
// and this for every change after: SetReachable reads every peer and
// entry, which on each change of each of N peers was O(N²) for a mesh.
func (s *Server) PeersChanged(up, down []key.Public) {
	s.table.PeersChanged(up, down, s.cfg.Now())
	var arrived []key.Public
	s.mu.Lock()
	for _, p := range down {
		s.reach.remove(p)
	}
	for _, p := range up {
		if p != s.cfg.Self && !s.reach.has(p) {
			arrived = append(arrived, p)
			s.reach.add(p)
		}
	}
	if len(arrived) > 0 {
		s.quick = quickRounds
	}
	s.mu.Unlock()
	s.welcome(arrived)
}

// Sender is implemented by a Transport that can also send to one peer
// (discovery's channels can). With it, a peer that becomes reachable is
// sent what it can take instead of the whole table going to everyone.
type Sender interface {
	Send(to key.Public, msg []byte) error
}

// Multicaster is implemented by a Sender that can also send one message to
// a set of peers at once (discovery's channels can: one copy per next
// hop). With it, the arrivals that take the same welcome from us get it
// as one message. What is multicast could be broadcast: our own entries.
type Multicaster interface {
	Multicast(to []key.Public, msg []byte)
}

// RemovePeer withdraws the names of a peer that left or became unreachable.
// They come back when PeerReachable(p) is called or p is listed in
// SetReachable again.
func (s *Server) RemovePeer(p key.Public) { s.table.SetPeerReachable(p, false, s.cfg.Now()) }

// PeerReachable answers a peer's names again (see RemovePeer).
func (s *Server) PeerReachable(p key.Public) { s.table.SetPeerReachable(p, true, s.cfg.Now()) }

// Lookup returns the addresses the server answers for name ("web" or
// "web.weave.local."), IPv4 first, sorted. For `dns-lookup`.
func (s *Server) Lookup(name string) ([]netip.Addr, error) {
	n, err := CanonicalName(name, s.domain)
	if err != nil {
		return nil, err
	}
	return s.table.Snapshot().Lookup(n), nil
}

// Entries lists the live entries with their owners, for `status dns`.
func (s *Server) Entries() []EntryStatus { return s.table.Entries() }

// Domain returns the zone answered from the table, e.g. "weave.local.".
func (s *Server) Domain() string { return s.domain }

// Table returns the server's name table.
func (s *Server) Table() *Table { return s.table }

// Counters returns the named counters (see counters.go).
func (s *Server) Counters() map[string]uint64 { return s.c.snapshot() }
