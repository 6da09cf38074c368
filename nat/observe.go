package nat

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// What the Manager reports: ICE state per peer and this host's NAT as
// observed through other peers' STUN answers.

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
