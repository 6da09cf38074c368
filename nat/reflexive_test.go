package nat

import (
	"net/netip"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// TestReflexive: a NATed peer tells every peer its mappings once (and again
// when they change; new peers when they appear); a public one tells
// nothing; a receiver picks the mapping towards itself, else the first.
func TestReflexive(t *testing.T) {
	pub := netip.MustParseAddrPort("192.0.2.1:6783")
	pub2 := netip.MustParseAddrPort("192.0.2.2:6783")
	mapped1 := netip.MustParseAddrPort("192.0.2.101:49601")
	mapped2 := netip.MustParseAddrPort("192.0.2.101:50002")
	a, b, c := newKey(t), newKey(t), newKey(t)
	var sent []key.Public
	var changes int
	m, err := New(Config{
		Self:      a,
		Port:      6783,
		Send:      func([]byte, netip.AddrPort) error { return nil },
		Signal:    func(to key.Public, msg []byte) error { sent = append(sent, to); return nil },
		HostAddrs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("198.51.100.2")} },
		OnChange:  func() { changes++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.peers[b] = PeerInfo{Key: b}
	m.behave = Behaviour{Mappings: []Mapping{{Server: pub, Mapped: mapped1}}}
	m.reflexiveObserved()
	if len(sent) != 1 || sent[0] != b {
		t.Fatalf("told %v, want b once", sent)
	}
	m.reflexiveObserved()
	if len(sent) != 1 {
		t.Errorf("told again with nothing changed: %v", sent)
	}
	m.peers[c] = PeerInfo{Key: c}
	m.reflexivePeers()
	if len(sent) != 2 || sent[1] != c {
		t.Errorf("new peer c not told: %v", sent)
	}
	m.behave = Behaviour{Public: true, Mappings: []Mapping{{Server: pub, Mapped: pub2}}}
	sent = nil
	m.reflexiveObserved()
	if len(sent) != 0 {
		t.Errorf("a public host told %v", sent)
	}

	// Receiving: b sent two mappings, one seen by a server that is us (our
	// underlay address).
	m.behave = Behaviour{}
	m.reflexiveFrom(b, []Mapping{{Server: pub2, Mapped: mapped2}, {Server: netip.MustParseAddrPort("198.51.100.2:6783"), Mapped: mapped1}})
	m.reflexiveFrom(c, []Mapping{{Server: pub2, Mapped: mapped2}})
	got := m.Reflexive()
	if got[b] != mapped1 || got[c] != mapped2 {
		t.Errorf("reflexive %v, want b %s (towards us) and c %s (first)", got, mapped1, mapped2)
	}
	if changes < 2 {
		t.Errorf("OnChange called %d times", changes)
	}
	delete(m.peers, c)
	m.reflexivePeers()
	if _, ok := m.Reflexive()[c]; ok {
		t.Errorf("departed peer still has a reflexive address")
	}
}

// TestObservedNATTellsOwner: a new observation of this host's own NAT
// (its mapped addresses, or whether it is public) is news to the owner
// (OnChange), which hands the addresses to the tunnel's opening turns;
// the same observation again is not.
func TestObservedNATTellsOwner(t *testing.T) {
	pub := netip.MustParseAddrPort("192.0.2.1:6783")
	mapped := netip.MustParseAddrPort("192.0.2.101:49601")
	var changes int
	m, err := New(Config{
		Self:      newKey(t),
		Port:      6783,
		Send:      func([]byte, netip.AddrPort) error { return nil },
		Signal:    func(key.Public, []byte) error { return nil },
		HostAddrs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("198.51.100.2")} },
		OnChange:  func() { changes++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	seen := []Mapping{{Server: pub, Mapped: mapped}}
	m.handle(event{kind: evObserved, mappings: seen})
	if changes != 1 {
		t.Fatalf("first observation: OnChange called %d times, want 1", changes)
	}
	m.handle(event{kind: evObserved, mappings: seen})
	if changes != 1 {
		t.Errorf("same observation again: OnChange called %d times, want still 1", changes)
	}
	m.handle(event{kind: evObserved, mappings: []Mapping{{Server: pub, Mapped: netip.MustParseAddrPort("192.0.2.101:50002")}}})
	if changes != 2 {
		t.Errorf("new mapping: OnChange called %d times, want 2", changes)
	}
}
