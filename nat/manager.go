// Package nat finds direct paths between peers behind NATs: every peer
// answers STUN Binding requests (so peers with public addresses are the
// mesh's STUN servers), and every pair of peers the tunnel relays runs ICE
// (pion/ice) over the tunnel's one UDP socket, signalling through the
// control plane. It owns no socket: the tunnel hands it STUN datagrams and
// sends its datagrams; the wire format of the signalling messages is in
// signal.go, the STUN subset in stun.go.
package nat

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/stun/v4"

	"github.com/weavewg/weavewg/types/key"
)

// Config is what a Manager needs. Send, Signal and HostAddrs are required.
type Config struct {
	Self key.Public
	Port uint16 // the shared UDP port
	// Send sends one datagram from the shared UDP port.
	Send func(pkt []byte, dst netip.AddrPort) error
	// Signal sends a signalling message to a peer over the control plane.
	Signal func(to key.Public, msg []byte) error
	// HostAddrs lists this host's own underlay addresses (host candidates);
	// never overlay or loopback addresses.
	HostAddrs func() []netip.Addr
	// OnChange is called (from the Manager's goroutine, so it must not
	// block) when Endpoints changed.
	OnChange func()
	Logger   *slog.Logger     // nil: discard
	Now      func() time.Time // nil: time.Now
	// Tick is the period of the pair machines; 0: one second.
	Tick time.Duration
}

// PeerInfo is one reachable peer as the control plane knows it.
type PeerInfo struct {
	Key      key.Public
	Endpoint netip.AddrPort // the address gossip has for it; a STUN server candidate
	Direct   bool           // we hold a control connection to it
}

// Manager runs the STUN responder and the ICE sessions of one host.
type Manager struct {
	// Constant after New.
	cfg  Config
	log  *slog.Logger
	ctr  *counters
	resp *Responder
	conn *packetConn
	mux  *udpMux

	// Atomics, read on the packet path and by callers.
	creds     atomic.Pointer[map[string]creds] // local ufrag → credentials of live sessions
	endpoints atomic.Pointer[map[key.Public]netip.AddrPort]
	status    atomic.Pointer[Status]
	relayed   atomic.Pointer[map[key.Public]bool]           // SetRelayed's last word
	reflexive atomic.Pointer[map[key.Public]netip.AddrPort] // reflexive.go

	events chan event
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
	run    atomic.Bool // Start was called

	// Owned by the loop.
	peers    map[key.Public]PeerInfo
	pairs    map[key.Public]*pair
	sessions map[key.Public]*session
	behave   Behaviour
	refl     reflexiveState
}

// creds are one session's ICE credentials.
type creds struct {
	localPwd, remotePwd string
}

// session is one ICE agent, for one peer. Owned by the loop.
type session struct {
	peer        key.Public
	id          uint64
	controlling bool
	agent       *ice.Agent
	ufrag, pwd  string
	remoteUfrag string
	remotePwd   string
	checking    bool // connectivity checks started
}

type evKind uint8

const (
	evSignal evKind = iota
	evLocalCandidate
	evSelected
	evFailed
	evPeers
	evObserved
)

type event struct {
	kind       evKind
	peer       key.Public
	sid        uint64
	sig        Signal
	cand       string
	ep         netip.AddrPort
	lt, rt     string
	peers      []PeerInfo
	mappings   []Mapping
	observedAt time.Time
}

// Status is what a Manager reports.
type Status struct {
	Peers     []PeerStatus
	Behaviour Behaviour
}

// PeerStatus is the ICE state of one peer.
type PeerStatus struct {
	Peer        key.Public
	State       string         // idle, checking, connected, backoff
	Endpoint    netip.AddrPort // connected: the selected remote address
	LocalType   string         // connected: candidate types of the selected pair
	RemoteType  string
	TookFor     time.Duration // connected: from session start to selection
	Failures    int           // sessions failed in a row
	Controlling bool
}

// Behaviour is this host's NAT as observed through other peers' STUN
// answers.
type Behaviour struct {
	Mappings []Mapping // one per STUN server that answered
	// Public: a mapped address is one of our own (no NAT in the way).
	Public bool
	// VariesPerDestination: servers saw different mapped addresses
	// (endpoint-dependent mapping, "hard" NAT). Meaningful with two or more
	// mappings.
	VariesPerDestination bool
	At                   time.Time
}

// Mapping is the address a STUN server saw us at.
type Mapping struct {
	Server netip.AddrPort
	Mapped netip.AddrPort
}

const (
	observeEvery   = 30 * time.Second
	maxSTUNServers = 4
	eventQueueLen  = 1024
)

// New makes a Manager; Start runs it.
func New(cfg Config) (*Manager, error) {
	if cfg.Send == nil || cfg.Signal == nil || cfg.HostAddrs == nil {
		return nil, fmt.Errorf("nat: Send, Signal and HostAddrs are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Tick == 0 {
		cfg.Tick = time.Second
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func() {}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		cfg:      cfg,
		log:      log,
		ctr:      &counters{},
		events:   make(chan event, eventQueueLen),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		peers:    map[key.Public]PeerInfo{},
		pairs:    map[key.Public]*pair{},
		sessions: map[key.Public]*session{},
	}
	m.resp = newResponder(cfg.Send, cfg.Now, m.ctr)
	m.conn = newPacketConn(cfg.Send, cfg.Port, cfg.Now, m.ctr)
	m.mux = newUDPMux(m.conn, cfg.Port, cfg.HostAddrs, pionLogger{log: log})
	m.creds.Store(&map[string]creds{})
	m.endpoints.Store(&map[key.Public]netip.AddrPort{})
	m.status.Store(&Status{})
	return m, nil
}

// Start runs the Manager's loop until Close.
func (m *Manager) Start() {
	if m.run.CompareAndSwap(false, true) {
		go m.loop()
	}
}

// Close stops the loop, closes every agent and the mux.
func (m *Manager) Close() error {
	m.once.Do(func() { close(m.stop) })
	if m.run.CompareAndSwap(false, true) {
		// Never started: nothing runs but the mux's reader.
		m.mux.Close()
		m.conn.Close()
		return nil
	}
	<-m.done
	return nil
}

// Counters reports the Counter* values.
func (m *Manager) Counters() map[string]uint64 { return m.ctr.snapshot() }

// Endpoints returns, per peer, the direct address ICE found and the tunnel
// should use. The map must not be modified.
func (m *Manager) Endpoints() map[key.Public]netip.AddrPort { return *m.endpoints.Load() }

// Status reports the pairs and the observed NAT behaviour.
func (m *Manager) Status() Status { return *m.status.Load() }

// SetPeers tells the Manager the reachable peers.
func (m *Manager) SetPeers(peers []PeerInfo) {
	m.post(event{kind: evPeers, peers: slices.Clone(peers)})
}

// HandleSignal takes a message of the "nat" channel from peer from.
func (m *Manager) HandleSignal(from key.Public, msg []byte) {
	s, err := ParseSignal(msg)
	if err != nil {
		m.ctr.inc(cSignalMalformed)
		return
	}
	m.post(event{kind: evSignal, peer: from, sig: s})
}

// HandleSTUN takes one STUN datagram the tunnel received from src. It runs
// on the tunnel's receive path: it does not block, and copies what it keeps.
// Credential-less Binding requests are answered; ICE checks reach the
// agents only with a ufrag and MESSAGE-INTEGRITY of a live session; answers
// only for a transaction we started, from the address we asked, and for
// ICE checks signed with the peer's password. Everything else is counted
// and dropped, so forged STUN never reaches an agent and never moves an
// endpoint.
func (m *Manager) HandleSTUN(pkt []byte, src netip.AddrPort) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	msg, err := parseSTUN(pkt)
	if err != nil {
		m.ctr.inc(cSTUNMalformed)
		return
	}
	if msg.method() != 1 {
		m.ctr.inc(cSTUNUnexpected)
		return
	}
	switch msg.class() {
	case classRequest:
		if isServerRequest(&msg) {
			m.resp.answer(&msg, src)
			return
		}
		if msg.username == nil || !msg.hasIntegrity {
			m.ctr.inc(cSTUNUnexpected)
			return
		}
		c, ok := (*m.creds.Load())[msg.ufrag()]
		if !ok {
			m.ctr.inc(cSTUNUnknownUfrag)
			return
		}
		if !checkIntegrity(pkt, c.localPwd) {
			m.ctr.inc(cSTUNBadIntegrity)
			return
		}
	case classSuccess, classError:
		t, ok := m.conn.lookup(msg.txID)
		if !ok {
			m.ctr.inc(cSTUNUnknownTxn)
			return
		}
		if t.dst != src {
			m.ctr.inc(cSTUNWrongSource)
			return
		}
		if t.username != "" {
			// Our check's USERNAME is "theirs:ours"; the answer is signed
			// with their password.
			local := t.username
			for i := range local {
				if local[i] == ':' {
					local = local[i+1:]
					break
				}
			}
			c, ok := (*m.creds.Load())[local]
			if !ok {
				m.ctr.inc(cSTUNUnknownUfrag)
				return
			}
			if !msg.hasIntegrity || c.remotePwd == "" || !checkIntegrity(pkt, c.remotePwd) {
				m.ctr.inc(cSTUNBadIntegrity)
				return
			}
		}
	default:
		m.ctr.inc(cSTUNUnexpected)
		return
	}
	m.conn.deliver(pkt, src)
}

// checkIntegrity checks MESSAGE-INTEGRITY with the short-term password pwd.
func checkIntegrity(pkt []byte, pwd string) bool {
	msg := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if err := msg.Decode(); err != nil {
		return false
	}
	return stun.NewShortTermIntegrity(pwd).Check(msg) == nil
}

func (m *Manager) post(e event) {
	select {
	case m.events <- e:
	case <-m.stop:
	}
}

func (m *Manager) loop() {
	defer close(m.done)
	tick := time.NewTicker(m.cfg.Tick)
	defer tick.Stop()
	nextObserve := m.cfg.Now().Add(2 * time.Second)
	for {
		select {
		case <-m.stop:
			for k := range m.sessions {
				m.closeSession(k)
			}
			m.mux.Close()
			m.conn.Close()
			return
		case e := <-m.events:
			m.handle(e)
		case <-tick.C:
			now := m.cfg.Now()
			m.tick(now)
			if !now.Before(nextObserve) {
				nextObserve = now.Add(observeEvery)
				m.observe()
			}
		}
		m.publish()
	}
}

func (m *Manager) newSessionID() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1 // never 0
}

func (m *Manager) pairOf(k key.Public) *pair {
	p := m.pairs[k]
	if p == nil {
		p = &pair{controlling: m.cfg.Self.Less(k)}
		m.pairs[k] = p
	}
	return p
}

// SetRelayed tells the Manager, per peer, whether the path owner (package
// reach, in the tunnel) relays it: the peers that need ICE. The owner calls
// it whenever a path changes; it does not block.
func (m *Manager) SetRelayed(relayed map[key.Public]bool) {
	r := maps.Clone(relayed)
	m.relayed.Store(&r)
}

func (m *Manager) tick(now time.Time) {
	var paths map[key.Public]bool
	if p := m.relayed.Load(); p != nil {
		paths = *p
	}
	keys := make([]key.Public, 0, len(m.peers))
	for k := range m.peers {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key.Public) int { return cmp.Compare(string(a[:]), string(b[:])) })
	for _, k := range keys {
		relayed, known := paths[k]
		p := m.pairOf(k)
		m.act(k, p, p.tick(now, known && relayed, m.newSessionID))
	}
}

// act carries out a pair's action.
func (m *Manager) act(k key.Public, p *pair, a action) {
	switch a {
	case actStart:
		m.closeSession(k)
		m.ctr.inc(cSessionsStarted)
		if err := m.openSession(k, p.session, true, "", ""); err != nil {
			m.log.Warn("starting an ICE session", "peer", k.Name(), "err", err)
			p.failed(m.cfg.Now(), p.session)
			return
		}
	case actRequest:
		m.signal(k, Signal{Type: SignalRequest})
	case actStop:
		m.ctr.inc(cSessionsFailed)
		if s := m.sessions[k]; s != nil {
			m.signal(k, Signal{Type: SignalBye, Session: s.id})
		}
		m.closeSession(k)
		m.log.Info("no direct path found; staying relayed", "peer", k.Name(), "failures", p.failures, "retry_in", p.retryAt.Sub(m.cfg.Now()).Round(time.Second).String())
	case actClear:
		m.ctr.inc(cPathsDead)
		if s := m.sessions[k]; s != nil {
			m.signal(k, Signal{Type: SignalBye, Session: s.id})
		}
		m.closeSession(k)
		m.log.Info("direct path found by ICE is dead; relaying and trying again", "peer", k.Name())
		m.updateEndpoints()
	}
}

func (m *Manager) handle(e event) {
	now := m.cfg.Now()
	switch e.kind {
	case evPeers:
		seen := map[key.Public]bool{}
		for _, p := range e.peers {
			if p.Key == m.cfg.Self || p.Key.IsZero() {
				continue
			}
			seen[p.Key] = true
			m.peers[p.Key] = p
		}
		for k := range m.peers {
			if !seen[k] {
				delete(m.peers, k)
				m.closeSession(k)
				delete(m.pairs, k)
				m.updateEndpoints()
			}
		}
		m.reflexivePeers()
	case evSignal:
		m.handleSignal(now, e.peer, e.sig)
	case evLocalCandidate:
		if s := m.sessions[e.peer]; s != nil && s.id == e.sid {
			m.signal(e.peer, Signal{Type: SignalCandidate, Session: s.id, Candidate: e.cand})
		}
	case evSelected:
		p := m.pairs[e.peer]
		if p == nil {
			return
		}
		wasRunning := p.state == pairRunning
		if p.selected(now, e.sid, e.ep, e.lt, e.rt) {
			if wasRunning {
				m.ctr.inc(cSessionsConnected)
				m.log.Info("direct path found", "peer", e.peer.Name(), "endpoint", e.ep.String(),
					"local", e.lt, "remote", e.rt, "took", p.tookFor.Round(time.Millisecond).String())
			}
			m.updateEndpoints()
		}
	case evFailed:
		if p := m.pairs[e.peer]; p != nil {
			m.act(e.peer, p, p.failed(now, e.sid))
		}
	case evObserved:
		m.behave = behaviourOf(e.mappings, m.cfg.HostAddrs(), e.observedAt)
		m.reflexiveObserved()
	}
}

func (m *Manager) handleSignal(now time.Time, from key.Public, s Signal) {
	if _, ok := m.peers[from]; !ok {
		m.ctr.inc(cSignalStale)
		return
	}
	if s.Type == SignalReflexive {
		m.reflexiveFrom(from, s.Reflexive)
		return
	}
	p := m.pairOf(from)
	sess := m.sessions[from]
	switch s.Type {
	case SignalRequest:
		m.act(from, p, p.request(now, m.newSessionID))
	case SignalOffer:
		if !p.offer(now, s.Session) {
			m.ctr.inc(cSignalStale)
			return
		}
		m.closeSession(from)
		m.ctr.inc(cSessionsStarted)
		m.updateEndpoints()
		if err := m.openSession(from, s.Session, false, s.Ufrag, s.Pwd); err != nil {
			m.log.Warn("answering an ICE offer", "peer", from.Name(), "err", err)
			m.act(from, p, p.failed(now, s.Session))
		}
	case SignalAnswer:
		if sess == nil || sess.id != s.Session || !sess.controlling || sess.checking {
			m.ctr.inc(cSignalStale)
			return
		}
		sess.remoteUfrag, sess.remotePwd = s.Ufrag, s.Pwd
		m.storeCreds()
		if _, err := sess.agent.StartDial(s.Ufrag, s.Pwd); err != nil {
			m.log.Warn("starting ICE checks", "peer", from.Name(), "err", err)
			m.act(from, p, p.failed(now, s.Session))
			return
		}
		sess.checking = true
	case SignalCandidate:
		if sess == nil || sess.id != s.Session {
			m.ctr.inc(cSignalStale)
			return
		}
		c, err := ice.UnmarshalCandidate(s.Candidate)
		if err != nil {
			m.ctr.inc(cSignalMalformed)
			return
		}
		if err := sess.agent.AddRemoteCandidate(c); err != nil {
			m.log.Debug("adding a remote candidate", "peer", from.Name(), "err", err)
		}
	case SignalBye:
		if sess == nil || sess.id != s.Session {
			m.ctr.inc(cSignalStale)
			return
		}
		m.act(from, p, p.failed(now, s.Session))
	}
}

func (m *Manager) signal(to key.Public, s Signal) {
	b, err := AppendSignal(nil, s)
	if err != nil {
		m.log.Error("encoding a signal [unexpected]", "type", s.Type.String(), "err", err)
		return
	}
	if err := m.cfg.Signal(to, b); err != nil {
		m.log.Debug("sending a signal", "peer", to.Name(), "type", s.Type.String(), "err", err)
	}
}

// stunServers are the STUN servers for a session with peer k (or for
// observing, with k zero): the peer itself and peers we hold control
// connections to, by key, at most maxSTUNServers with distinct addresses.
func (m *Manager) stunServers(k key.Public) []netip.AddrPort {
	var out []netip.AddrPort
	add := func(a netip.AddrPort) {
		if a.IsValid() && len(out) < maxSTUNServers && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if p, ok := m.peers[k]; ok {
		add(p.Endpoint)
	}
	keys := make([]key.Public, 0, len(m.peers))
	for pk, p := range m.peers {
		if p.Direct {
			keys = append(keys, pk)
		}
	}
	slices.SortFunc(keys, func(a, b key.Public) int { return cmp.Compare(string(a[:]), string(b[:])) })
	for _, pk := range keys {
		add(m.peers[pk].Endpoint)
	}
	return out
}

// openSession makes the agent of session id with peer k and sends the
// offer (controlling) or the answer (controlled, with the offer's
// credentials).
func (m *Manager) openSession(k key.Public, id uint64, controlling bool, rufrag, rpwd string) error {
	var urls []*stun.URI
	for _, a := range m.stunServers(k) {
		u, err := stun.ParseURI("stun:" + a.String())
		if err == nil {
			urls = append(urls, u)
		}
	}
	disc, fail, keep, check := 3*time.Second, 6*time.Second, 2*time.Second, 100*time.Millisecond
	gather := 3 * time.Second
	agent, err := ice.NewAgentWithOptions(
		ice.WithUrls(urls),
		ice.WithNetworkTypes([]ice.NetworkType{ice.NetworkTypeUDP4}),
		ice.WithCandidateTypes([]ice.CandidateType{ice.CandidateTypeHost, ice.CandidateTypeServerReflexive}),
		ice.WithUDPMux(m.mux),
		ice.WithUDPMuxSrflx(m.mux),
		ice.WithMulticastDNSMode(ice.MulticastDNSModeDisabled),
		ice.WithLoggerFactory(pionLogger{log: m.log}),
		ice.WithDisconnectedTimeout(disc),
		ice.WithFailedTimeout(fail),
		ice.WithKeepaliveInterval(keep),
		ice.WithCheckInterval(check),
		ice.WithSTUNGatherTimeout(gather),
	)
	if err != nil {
		return err
	}
	ufrag, pwd, err := agent.GetLocalUserCredentials()
	if err != nil {
		agent.Close()
		return err
	}
	s := &session{peer: k, id: id, controlling: controlling, agent: agent, ufrag: ufrag, pwd: pwd, remoteUfrag: rufrag, remotePwd: rpwd}
	agent.OnCandidate(func(c ice.Candidate) {
		if c != nil {
			m.post(event{kind: evLocalCandidate, peer: k, sid: id, cand: c.Marshal()})
		}
	})
	agent.OnSelectedCandidatePairChange(func(local, remote ice.Candidate) {
		a, err := netip.ParseAddr(remote.Address())
		if err != nil {
			return
		}
		m.post(event{kind: evSelected, peer: k, sid: id, ep: netip.AddrPortFrom(a.Unmap(), uint16(remote.Port())),
			lt: local.Type().String(), rt: remote.Type().String()})
	})
	agent.OnConnectionStateChange(func(st ice.ConnectionState) {
		if st == ice.ConnectionStateFailed {
			m.post(event{kind: evFailed, peer: k, sid: id})
		}
	})
	m.sessions[k] = s
	m.storeCreds()
	if controlling {
		m.signal(k, Signal{Type: SignalOffer, Session: id, Ufrag: ufrag, Pwd: pwd})
	} else {
		m.signal(k, Signal{Type: SignalAnswer, Session: id, Ufrag: ufrag, Pwd: pwd})
		if _, err := agent.StartAccept(rufrag, rpwd); err != nil {
			m.closeSession(k)
			return err
		}
		s.checking = true
	}
	if err := agent.GatherCandidates(); err != nil {
		m.closeSession(k)
		return err
	}
	m.log.Debug("ICE session started", "peer", k.Name(), "controlling", controlling, "stun_servers", len(urls))
	return nil
}

func (m *Manager) closeSession(k key.Public) {
	s := m.sessions[k]
	if s == nil {
		return
	}
	delete(m.sessions, k)
	m.storeCreds()
	go s.agent.Close() // may wait for pion's goroutines; never on the loop
}

func (m *Manager) storeCreds() {
	c := make(map[string]creds, len(m.sessions))
	for _, s := range m.sessions {
		c[s.ufrag] = creds{localPwd: s.pwd, remotePwd: s.remotePwd}
	}
	m.creds.Store(&c)
}

func (m *Manager) updateEndpoints() {
	eps := map[key.Public]netip.AddrPort{}
	for k, p := range m.pairs {
		if p.state == pairDirect && p.endpoint.IsValid() {
			eps[k] = p.endpoint
		}
	}
	old := *m.endpoints.Load()
	if mapsEqual(old, eps) {
		return
	}
	m.endpoints.Store(&eps)
	m.cfg.OnChange()
}

func mapsEqual(a, b map[key.Public]netip.AddrPort) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func (m *Manager) publish() {
	st := Status{Behaviour: m.behave}
	for k, p := range m.pairs {
		st.Peers = append(st.Peers, PeerStatus{
			Peer: k, State: p.state.String(), Endpoint: p.endpoint, LocalType: p.localType, RemoteType: p.remoteType,
			TookFor: p.tookFor, Failures: p.failures, Controlling: p.controlling,
		})
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int { return cmp.Compare(string(a.Peer[:]), string(b.Peer[:])) })
	m.status.Store(&st)
}

// observe asks up to maxSTUNServers peers where they see us, in the
// background; the answers come back as an evObserved event.
func (m *Manager) observe() {
	servers := m.stunServers(key.Public{})
	if len(servers) == 0 {
		return
	}
	go func() {
		var (
			mu  sync.Mutex
			out []Mapping
			wg  sync.WaitGroup
		)
		for _, s := range servers {
			wg.Go(func() {
				x, err := m.mux.GetXORMappedAddr(net.UDPAddrFromAddrPort(s), 3*time.Second)
				if err != nil {
					return
				}
				a, ok := netip.AddrFromSlice(x.IP)
				if !ok {
					return
				}
				mu.Lock()
				out = append(out, Mapping{Server: s, Mapped: netip.AddrPortFrom(a.Unmap(), uint16(x.Port))})
				mu.Unlock()
			})
		}
		wg.Wait()
		if len(out) > 0 {
			slices.SortFunc(out, func(a, b Mapping) int { return a.Server.Compare(b.Server) })
			m.post(event{kind: evObserved, mappings: out, observedAt: m.cfg.Now()})
		}
	}()
}

// behaviourOf sums up mappings: public when one is our own address,
// varying when they differ.
func behaviourOf(ms []Mapping, own []netip.Addr, at time.Time) Behaviour {
	b := Behaviour{Mappings: ms, At: at}
	for _, x := range ms {
		if slices.Contains(own, x.Mapped.Addr()) {
			b.Public = true
		}
		if x.Mapped != ms[0].Mapped {
			b.VariesPerDestination = true
		}
	}
	return b
}
