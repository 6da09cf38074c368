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
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"

	"github.com/weavewg/weavewg/internal/beat"
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
	// block) when Endpoints, Reflexive or this host's observed NAT
	// behaviour changed.
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
	idle      atomic.Pointer[map[key.Public]bool]           // SetIdle's last word
	held      atomic.Pointer[map[key.Public]bool]           // SetHeld's last word
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

func (m *Manager) post(e event) {
	select {
	case m.events <- e:
	case <-m.stop:
	}
}

func (m *Manager) loop() {
	defer close(m.done)
	tick := beat.NewTicker(m.cfg.Tick) // with the daemon's other loops
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

// SetIdle tells the Manager, per peer, whether the path owner found the
// pair idle (no data for a while): its ICE session closes and
// none starts until the pair carries data again. An agent costs a
// connectivity check every few seconds, and an idle mesh must cost little
// however large (issue 18). Offers from the peer are still answered.
func (m *Manager) SetIdle(idle map[key.Public]bool) {
	i := maps.Clone(idle)
	m.idle.Store(&i)
}

// SetHeld tells the Manager, per peer, whether the path owner holds off
// sending the peer anything straight (package reach, opening turns: the
// peer's NAT must see its own host's datagram first). A held pair runs no
// ICE session, starts none, and takes no offer or request: an agent would
// send the peer STUN and checks at once. When the hold ends, the pair
// starts afresh (the controlled side asks at once).
func (m *Manager) SetHeld(held map[key.Public]bool) {
	h := maps.Clone(held)
	m.held.Store(&h)
}

func (m *Manager) isHeld(k key.Public) bool {
	p := m.held.Load()
	return p != nil && (*p)[k]
}

func (m *Manager) tick(now time.Time) {
	var paths, idle, held map[key.Public]bool
	if p := m.relayed.Load(); p != nil {
		paths = *p
	}
	if p := m.idle.Load(); p != nil {
		idle = *p
	}
	if p := m.held.Load(); p != nil {
		held = *p
	}
	keys := make([]key.Public, 0, len(m.peers))
	for k := range m.peers {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key.Public) int { return cmp.Compare(string(a[:]), string(b[:])) })
	for _, k := range keys {
		relayed, known := paths[k]
		p := m.pairOf(k)
		if idle[k] {
			m.quiet(k, p)
			continue
		}
		if held[k] {
			m.holdOff(k, p)
			continue
		}
		m.act(k, p, p.tick(now, known && relayed, m.newSessionID))
	}
}

// quiet closes the ICE session of an idle pair and forgets its state; the
// address ICE had selected goes too (the tunnel keeps the one it learned
// from the peer's probes).
func (m *Manager) quiet(k key.Public, p *pair) {
	if s := m.sessions[k]; s != nil {
		// No bye: the peer's pair goes idle within a tick or two of ours
		// (data on a pair stamps both ends), long before its agent would
		// miss our checks; a bye would have it count a dead path.
		m.ctr.inc(cSessionsIdled)
		m.closeSession(k)
		m.log.Debug("pair idle: ICE session closed", "peer", k.Name())
	}
	if p.state != pairIdle || p.failures != 0 {
		p.reset()
		m.updateEndpoints()
	}
}

// holdOff closes the ICE session of a held pair and forgets its state, so
// that it starts afresh when the hold ends.
func (m *Manager) holdOff(k key.Public, p *pair) {
	if s := m.sessions[k]; s != nil {
		m.closeSession(k)
		m.log.Debug("pair held off: ICE session closed", "peer", k.Name())
	}
	if p.state != pairIdle || p.failures != 0 || !p.asked.IsZero() {
		p.reset()
		m.updateEndpoints()
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
		old := m.behave
		m.behave = behaviourOf(e.mappings, m.cfg.HostAddrs(), e.observedAt)
		m.reflexiveObserved()
		if old.Public != m.behave.Public || !slices.Equal(old.Mappings, m.behave.Mappings) {
			// The owner reads our own NAT's address and publicness from
			// Status (the tunnel's opening turns wait for them): tell it now
			// rather than at its next periodic look.
			m.cfg.OnChange()
		}
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
	if (s.Type == SignalOffer || s.Type == SignalRequest) && m.isHeld(from) {
		m.ctr.inc(cSignalHeld)
		return
	}
	switch s.Type {
	case SignalRequest:
		if sess != nil && sess.controlling && !sess.checking && p.state == pairRunning {
			// The peer never answered our offer (it held off) and asks
			// now: offer again in a new session rather than wait for
			// this one to time out.
			p.start(now, m.newSessionID())
			m.act(from, p, actStart)
			return
		}
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
