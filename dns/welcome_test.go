package dns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// memMulticast is memTransport that can also multicast, and keeps what
// it was asked to multicast.
type memMulticast struct {
	memTransport
	multicasts *[][]key.Public
}

func (t memMulticast) Multicast(to []key.Public, b []byte) {
	*t.multicasts = append(*t.multicasts, slices.Clone(to))
	for _, k := range to {
		t.n.queue = append(t.n.queue, memMsg{t.self, k, b})
	}
}

// multicastServers is memServers over transports that multicast, each
// seeing every other arrive at once; multicasts records every multicast.
func multicastServers(t *testing.T, multicasts *[][]key.Public, keys ...key.Public) *memNet {
	t.Helper()
	n := &memNet{servers: map[key.Public]*Server{}}
	for _, k := range keys {
		n.servers[k] = multicastServer(t, n, k, multicasts)
	}
	for _, s := range n.servers {
		s.SetReachable(keys)
	}
	n.run(t)
	return n
}

func multicastServer(t *testing.T, n *memNet, k key.Public, multicasts *[][]key.Public) *Server {
	t.Helper()
	s, err := New(Config{Self: k, Upstreams: []string{"127.0.0.1:1"}, GossipInterval: -1, Transport: memMulticast{memTransport{n, k}, multicasts}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A peer that sees several peers arrive at once sends them its own state
// as one multicast, whatever copies of theirs it holds (after a heal, a
// message to each arrival crossing its whole path was O(N²) frames for
// the mesh); the state reaches each.
func TestWelcomeMulticastToArrivals(t *testing.T) {
	a, b, c, d := peerKey(1), peerKey(2), peerKey(3), peerKey(4)
	var multicasts [][]key.Public
	n := multicastServers(t, &multicasts, a, b, c, d)
	must(t, n.servers[d].AddEntry("db", netip.MustParseAddr("10.32.0.4"), "c4"))
	must(t, n.servers[a].AddEntry("web", netip.MustParseAddr("10.32.0.1"), "c1"))
	n.run(t)
	as := n.servers[a]
	as.PeersChanged(nil, []key.Public{b, c, d}) // a partition
	multicasts, n.queue = nil, nil
	as.PeersChanged([]key.Public{b, c, d}, nil) // and its heal, seen at a
	if len(multicasts) != 1 || !slices.Equal(sortedPeers(multicasts[0]), sortedPeers([]key.Public{b, c, d})) || len(n.queue) != 3 {
		t.Fatalf("multicasts to %v (%d deliveries), want one to the three arrivals", multicasts, len(n.queue))
	}
	for _, k := range []key.Public{b, c, d} {
		n.servers[k].PeersChanged(nil, []key.Public{a})
	}
	n.queue = nil
	for _, k := range []key.Public{b, c, d} {
		n.servers[k].PeersChanged([]key.Public{a}, nil)
		n.run(t)
	}
	as.PeersChanged(nil, []key.Public{b, c, d})
	as.PeersChanged([]key.Public{b, c, d}, nil)
	n.run(t)
	for _, k := range []key.Public{b, c, d} {
		if got, _ := n.servers[k].Lookup("web"); len(got) != 1 {
			t.Errorf("%s resolves web to %v after the heal", k.Name(), got)
		}
		if got := n.servers[k].Counters()["dns_stale_returned"]; got != 0 {
			t.Errorf("%s returned %d entries to a, whose state held them all", k.Name(), got)
		}
	}
	if got, _ := as.Lookup("db"); len(got) != 1 {
		t.Errorf("a resolves db to %v after the heal", got)
	}
	if c := as.Counters(); c["dns_welcome_multicast"] != 3 || c["dns_stale_returned"] != 0 {
		t.Errorf("a counted %d multicast welcomes and returned %d entries, want 3 (its first arrivals, two heals) and none", c["dns_welcome_multicast"], c["dns_stale_returned"])
	}
}

// A peer restarted with its table lost, seen arrive together with
// another peer (so sent no copies of its names), gets back the names of
// its previous run from every peer that holds them, when its own state
// reaches them, and buries them: with names of its own or none.
func TestStaleNamesReturnedAfterRestart(t *testing.T) {
	for _, names := range []bool{true, false} {
		t.Run(fmt.Sprintf("names=%v", names), func(t *testing.T) {
			a, b, c, e := peerKey(1), peerKey(2), peerKey(3), peerKey(5)
			var multicasts [][]key.Public
			n := multicastServers(t, &multicasts, a, b, c)
			must(t, n.servers[a].AddEntry("old", netip.MustParseAddr("10.32.0.9"), "c9"))
			n.run(t)
			n.rounds(t, 1) // a's first run's states compared, a second before the restart
			for _, k := range []key.Public{b, c} {
				n.servers[k].PeersChanged(nil, []key.Public{a})
			}
			n.servers[a].Close()
			a2 := multicastServer(t, n, a, &multicasts)
			n.servers[a] = a2
			if names {
				must(t, a2.AddEntry("web", netip.MustParseAddr("10.32.0.1"), "c1"))
			}
			n.servers[e] = multicastServer(t, n, e, &multicasts)
			n.servers[e].SetReachable([]key.Public{a, b, c})
			for _, k := range []key.Public{b, c} {
				n.servers[k].PeersChanged([]key.Public{a, e}, nil) // two arrivals: a multicast, no copies
			}
			a2.SetReachable([]key.Public{b, c, e})
			n.run(t)
			n.rounds(t, 1) // states are compared on the next tick
			for _, k := range []key.Public{a, b, c, e} {
				if got, _ := n.servers[k].Lookup("old"); len(got) != 0 {
					t.Errorf("%s still resolves a's previous run's name to %v (counters b %v)", k.Name(), got, n.servers[b].Counters())
				}
				if got, _ := n.servers[k].Lookup("web"); names && len(got) != 1 {
					t.Errorf("%s resolves web to %v", k.Name(), got)
				}
			}
			if got := n.servers[b].Counters()["dns_stale_returned"]; got != 1 {
				t.Errorf("b returned %d entries, want a's one stale name", got)
			}
		})
	}
}

// An owner's state in several messages (more names than one holds) is
// one state: a peer holding all of it returns nothing, where comparing
// each part alone had every peer send the owner the rest of its names at
// each of its periodic rounds.
func TestStateInPartsNotReturned(t *testing.T) {
	a, b := peerKey(1), peerKey(2)
	n := memServers(t, a, b)
	as := n.servers[a]
	label := strings.Repeat("x", 60)
	for i := range 400 {
		name := fmt.Sprintf("%s.%s.%s.n%d", label, label, label, i)
		must(t, as.AddEntry(name, netip.AddrFrom4([4]byte{10, 32, byte(i >> 8), byte(i)}), fmt.Sprint("c", i)))
	}
	n.run(t)
	if parts := len(stateMessages(as.table.ownEntries())); parts < 2 {
		t.Fatalf("a's state is %d message(s), want several", parts)
	}
	n.rounds(t, 1) // the states of the build compared
	as.Tick()      // broadcasts a's state: it is past fullUpdateMax
	n.run(t)
	n.rounds(t, 1)
	bs := n.servers[b]
	if got := bs.Counters()["dns_stale_returned"]; got != 0 {
		t.Fatalf("b returned %d of a's entries, whose state in parts held them all", got)
	}
	// A stale one among them is still returned and buried.
	bs.table.Merge([]Entry{{Owner: a, Name: "old", Addr: netip.MustParseAddr("10.32.9.9"), Origin: "c-old", Version: 1}}, bs.cfg.Now())
	as.Tick()
	n.run(t)
	n.rounds(t, 1)
	if got := bs.Counters()["dns_stale_returned"]; got != 1 {
		t.Fatalf("b returned %d entries, want the stale one", got)
	}
	n.rounds(t, 1)
	if got, _ := bs.Lookup("old"); len(got) != 0 {
		t.Fatalf("b still resolves a's stale name to %v", got)
	}
}

// A joiner's state with no names, followed within the second by its first
// name's update, is not answered with that name: only what a peer held
// when the state came can be stale by it (at N=1,000 every peer sent a
// joiner its name back).
func TestStateThenUpdateNotReturned(t *testing.T) {
	a, b, c := peerKey(1), peerKey(2), peerKey(3)
	var multicasts [][]key.Public
	n := multicastServers(t, &multicasts, b, c)
	as := multicastServer(t, n, a, &multicasts)
	n.servers[a] = as
	as.SetReachable([]key.Public{b, c}) // welcomes b and c: its state, empty
	for _, k := range []key.Public{b, c} {
		n.servers[k].PeersChanged([]key.Public{a}, nil)
	}
	n.run(t)
	must(t, as.AddEntry("web", netip.MustParseAddr("10.32.0.1"), "c1"))
	n.run(t)
	n.rounds(t, 2)
	for _, k := range []key.Public{b, c} {
		if got := n.servers[k].Counters()["dns_stale_returned"]; got != 0 {
			t.Errorf("%s returned %d of a's entries, added after its state", k.Name(), got)
		}
		if got, _ := n.servers[k].Lookup("web"); len(got) != 1 {
			t.Errorf("%s resolves a's name to %v", k.Name(), got)
		}
	}
}

// One arrival is sent a message of its own, multicast or not.
func TestWelcomeOneArrivalUnicast(t *testing.T) {
	a, b := peerKey(1), peerKey(2)
	n := memServers(t, b)
	var multicasts [][]key.Public
	as, err := New(Config{Self: a, Upstreams: []string{"127.0.0.1:1"}, GossipInterval: -1, Transport: memMulticast{memTransport{n, a}, &multicasts}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { as.Close() })
	n.servers[a] = as
	must(t, as.AddEntry("web", netip.MustParseAddr("10.32.0.1"), "c1"))
	n.queue = nil
	as.PeersChanged([]key.Public{b}, nil)
	if len(multicasts) != 0 || len(n.queue) != 1 {
		t.Fatalf("%d multicasts and %d messages for one arrival, want one message", len(multicasts), len(n.queue))
	}
}

// Quick rounds go to the control neighbours in turn, falling back to a
// random reachable peer when none is reachable.
func TestQuickRoundsToNeighbours(t *testing.T) {
	keys := []key.Public{peerKey(1), peerKey(2), peerKey(3), peerKey(4), peerKey(5)}
	n := memServers(t, keys...)
	n.rounds(t, quickRounds+1)
	a := n.servers[keys[0]]
	a.SetNeighbours([]key.Public{keys[1], keys[2]})
	n.queue = nil
	a.changed()
	to := map[key.Public]int{}
	for range quickRounds {
		a.DigestTick()
		for _, m := range n.queue {
			to[m.to]++
		}
		n.queue = nil
	}
	if len(to) != 2 || to[keys[1]]+to[keys[2]] != quickRounds || to[keys[1]] < 2 || to[keys[2]] < 2 {
		t.Fatalf("quick rounds' digests went to %v, want %d to the two neighbours in turn", to, quickRounds)
	}
	a.SetNeighbours([]key.Public{peerKey(9)}) // not reachable
	a.changed()
	a.DigestTick()
	if len(n.queue) != 1 || !slices.Contains(keys[1:], n.queue[0].to) {
		t.Fatalf("with no neighbour reachable, a quick round sent %d messages, want a digest to a reachable peer", len(n.queue))
	}
}

// An update lost on its way to a peer whose neighbours got it is repaired
// by the quick rounds over the control graph alone: along a line a-b-c,
// c lacks a's name; b's digest to c differs, c pulls a, a answers.
func TestLostUpdateRepairedAlongNeighbours(t *testing.T) {
	a, b, c := peerKey(1), peerKey(2), peerKey(3)
	n := memServers(t, a, b, c)
	n.rounds(t, quickRounds+1)
	n.servers[a].SetNeighbours([]key.Public{b})
	n.servers[b].SetNeighbours([]key.Public{a, c})
	n.servers[c].SetNeighbours([]key.Public{b})
	n.loseEntry(t, a, c, "web", "10.32.0.5")
	n.rounds(t, quickRounds)
	if got, _ := n.servers[c].Lookup("web"); len(got) != 1 {
		t.Fatalf("c resolves web to %v after %d quick rounds; counters b %v, c %v", got, quickRounds, n.servers[b].Counters(), n.servers[c].Counters())
	}
}

func sortedPeers(ks []key.Public) []key.Public {
	out := slices.Clone(ks)
	slices.SortFunc(out, compareKeys)
	return out
}
