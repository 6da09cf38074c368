package nat

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Reflexive addresses: every peer tells every other (a SignalReflexive on
// the "nat" channel) where STUN through other peers showed it, so that
// peers try that address before the listen address gossip guesses. Behind
// a stock masquerade router the port is often not the listen port: the
// router gave another one because an early datagram of someone else took
// the tuple (issue 12). A public host tells nothing (gossip's address is
// right). Each receiver picks, of the mappings a peer sent, the one whose
// STUN server was itself (the mapping towards us), else the first.
//
// All of it is owned by the Manager's loop; the choice per peer is
// published in m.reflexive for Reflexive.

// reflexiveState is the loop's record of what was told and heard.
type reflexiveState struct {
	sent []Mapping                // what we last told; nil: nothing to tell
	told map[key.Public]bool      // peers told sent
	got  map[key.Public][]Mapping // what each peer told us
}

// Reflexive is, per peer that told us its reflexive addresses, the one to
// try: its mapping towards us, else its first.
func (m *Manager) Reflexive() map[key.Public]netip.AddrPort {
	if p := m.reflexive.Load(); p != nil {
		return *p
	}
	return nil
}

// reflexiveObserved runs after a new observation: tell every peer if what
// we would tell changed.
func (m *Manager) reflexiveObserved() {
	var next []Mapping
	if !m.behave.Public {
		next = m.behave.Mappings
		if len(next) > maxReflexive {
			next = next[:maxReflexive]
		}
	}
	if slices.Equal(next, m.refl.sent) {
		return
	}
	m.refl.sent = slices.Clone(next)
	m.refl.told = map[key.Public]bool{}
	m.reflexiveTell()
}

// reflexiveTell tells the peers not told yet.
func (m *Manager) reflexiveTell() {
	if m.refl.sent == nil {
		return
	}
	if m.refl.told == nil {
		m.refl.told = map[key.Public]bool{}
	}
	for k := range m.peers {
		if m.refl.told[k] {
			continue
		}
		m.refl.told[k] = true
		m.signal(k, Signal{Type: SignalReflexive, Reflexive: m.refl.sent})
	}
}

// reflexivePeers runs after the peers changed: forget departed ones, tell
// new ones.
func (m *Manager) reflexivePeers() {
	changed := false
	for k := range m.refl.got {
		if _, ok := m.peers[k]; !ok {
			delete(m.refl.got, k)
			changed = true
		}
	}
	for k := range m.refl.told {
		if _, ok := m.peers[k]; !ok {
			delete(m.refl.told, k)
		}
	}
	m.reflexiveTell()
	if changed {
		m.reflexivePublish()
	}
}

// reflexiveFrom records what peer from told us.
func (m *Manager) reflexiveFrom(from key.Public, ms []Mapping) {
	if m.refl.got == nil {
		m.refl.got = map[key.Public][]Mapping{}
	}
	if len(ms) == 0 {
		delete(m.refl.got, from)
	} else {
		m.refl.got[from] = slices.Clone(ms)
	}
	m.reflexivePublish()
}

// reflexivePublish recomputes the choice per peer and publishes it.
func (m *Manager) reflexivePublish() {
	own := m.cfg.HostAddrs()
	for _, x := range m.behave.Mappings {
		own = append(own, x.Mapped.Addr())
	}
	out := make(map[key.Public]netip.AddrPort, len(m.refl.got))
	for k, ms := range m.refl.got {
		out[k] = ms[0].Mapped
		for _, x := range ms {
			if slices.Contains(own, x.Server.Addr()) {
				out[k] = x.Mapped
				break
			}
		}
	}
	if old := m.Reflexive(); old != nil && maps.Equal(old, out) {
		return
	}
	m.reflexive.Store(&out)
	m.cfg.OnChange()
}
