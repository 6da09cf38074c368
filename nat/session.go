package nat

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/stun/v4"
	"github.com/weavewg/weavewg/types/key"
)

// ICE sessions: one pion agent per peer, the STUN servers it uses, and the
// endpoints the selected pairs give.

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
