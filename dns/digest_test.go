package dns

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// memNet carries the servers' gossip in memory: broadcasts to every other
// server, sends to one, and drops what drop says.
type memNet struct {
	servers map[key.Public]*Server
	queue   []memMsg
	drop    func(m memMsg) bool
}

type memMsg struct {
	from, to key.Public
	b        []byte
}

type memTransport struct {
	n    *memNet
	self key.Public
}

func (t memTransport) Broadcast(b []byte) {
	for k := range t.n.servers {
		if k != t.self {
			t.n.queue = append(t.n.queue, memMsg{t.self, k, b})
		}
	}
}

func (t memTransport) Send(to key.Public, b []byte) error {
	t.n.queue = append(t.n.queue, memMsg{t.self, to, b})
	return nil
}

func (n *memNet) run(t *testing.T) {
	t.Helper()
	for len(n.queue) > 0 {
		m := n.queue[0]
		n.queue = n.queue[1:]
		if n.drop != nil && n.drop(m) {
			continue
		}
		if err := n.servers[m.to].HandleMessage(m.from, m.b); err != nil {
			t.Fatal(err)
		}
	}
}

func memServers(t *testing.T, keys ...key.Public) *memNet {
	t.Helper()
	n := &memNet{servers: map[key.Public]*Server{}}
	for _, k := range keys {
		s, err := New(Config{Self: k, Upstreams: []string{"127.0.0.1:1"}, GossipInterval: -1, Transport: memTransport{n, k}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		n.servers[k] = s
	}
	for _, s := range n.servers {
		s.SetReachable(keys)
	}
	n.run(t)
	return n
}

// TestLostUpdateRepairedByDigest (issue 18): a name whose update was lost
// on the way to one peer reaches it after that peer's next digest to any
// peer holding it, not at the owner's next round (every N seconds past
// ten peers: minutes at N=300).
func TestLostUpdateRepairedByDigest(t *testing.T) {
	a, b, c := peerKey(1), peerKey(2), peerKey(3)
	n := memServers(t, a, b, c)
	n.loseEntry(t, a, b, "web", "10.32.0.5")
	n.servers[b].SendDigest(c)
	n.run(t)
	got, err := n.servers[b].Lookup("web.weave.local")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("10.32.0.5") {
		t.Fatalf("b resolves web to %v (%v) after a digest to c; counters b %v", got, err, n.servers[b].Counters())
	}
	// Tables that agree cost the digest alone.
	differed := n.servers[c].Counters()["dns_digest_differed"]
	n.servers[b].SendDigest(c)
	if len(n.queue) != 1 {
		t.Fatalf("%d messages for a digest", len(n.queue))
	}
	n.run(t)
	if got := n.servers[c].Counters()["dns_digest_differed"]; got != differed {
		t.Errorf("c answered a digest of an equal table")
	}
}

// TestRepairMessagesParse: the three repair messages round-trip, and
// malformed ones are refused, never a panic.
func TestRepairMessagesParse(t *testing.T) {
	m := map[key.Public]uint64{peerKey(1): 7, peerKey(2): 9}
	d := appendDigest(nil, m)
	if _, _, err := parseRepair(d); err != nil || len(d) != digestMsgLen {
		t.Fatalf("digest: %v, %d bytes", err, len(d))
	}
	ps := []summaryPair{{peerKey(1), 7}, {peerKey(2), 1 << 40}}
	_, got, err := parseRepair(appendSummary(nil, ps))
	if err != nil || len(got) != 2 || got[0] != ps[0] || got[1] != ps[1] {
		t.Fatalf("summary: %v %v", got, err)
	}
	for _, bad := range [][]byte{
		d[:len(d)-1],
		appendSummary(nil, ps)[:hdrLen+summaryItem+3],
		{wireVersion, MsgPull, 0, 1},
		{wireVersion, MsgPull, 0, 0, 0},
	} {
		if _, _, err := parseRepair(bad); err == nil {
			t.Errorf("parsed %x", bad)
		}
	}
}

func FuzzParseRepair(f *testing.F) {
	f.Add(appendDigest(nil, map[key.Public]uint64{peerKey(1): 3}))
	f.Add(appendSummary(nil, []summaryPair{{peerKey(1), 3}}))
	f.Add([]byte{wireVersion, MsgPull, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, ps, err := parseRepair(b)
		if err == nil && len(b) > 1 && b[1] == MsgSummary && !bytes.Equal(appendSummary(nil, ps), b) {
			t.Fatalf("summary does not round-trip")
		}
	})
}

// TestJoinerMissingManyRepairedAtOnce: a peer that lacks many owners'
// names (a joiner whose arrival messages were dropped by relays with no
// route to it yet) gets them all from one digest exchange, not 16 owners
// a round (a simulated N=300 joiner still lacked a name after 100 s).
func TestJoinerMissingManyRepairedAtOnce(t *testing.T) {
	var keys []key.Public
	for i := range 40 {
		keys = append(keys, peerKey(byte(10+i)))
	}
	n := memServers(t, keys...)
	j, q := keys[0], keys[1]
	n.drop = func(m memMsg) bool { return m.to == j }
	for i, k := range keys[1:] {
		must(t, n.servers[k].AddEntry(fmt.Sprintf("c%d", i), netip.AddrFrom4([4]byte{10, 32, 1, byte(i)}), "c"))
	}
	n.run(t)
	n.drop = nil
	n.servers[j].SendDigest(q)
	n.run(t)
	for i := range keys[1:] {
		if got, _ := n.servers[j].Lookup(fmt.Sprintf("c%d.weave.local", i)); len(got) != 1 {
			t.Fatalf("c%d not resolved after one digest exchange (counters %v)", i, n.servers[j].Counters())
		}
	}
}

// rounds calls DigestTick on every server n times, delivering what each
// round sends: the seconds after a change, as a Server's loop or the
// simulator's node loop drive them.
// loseEntry adds name at owner with every message to victim dropped, as
// a lost update, and checks that victim lacks it.
func (n *memNet) loseEntry(t *testing.T, owner, victim key.Public, name, addr string) {
	t.Helper()
	n.drop = func(m memMsg) bool { return m.to == victim }
	must(t, n.servers[owner].AddEntry(name, netip.MustParseAddr(addr), "c-"+name))
	n.run(t)
	n.drop = nil
	if got, _ := n.servers[victim].Lookup(name); len(got) != 0 {
		t.Fatalf("setting up: %s has %s: %v", victim.Name(), name, got)
	}
}

func (n *memNet) rounds(t *testing.T, times int) {
	t.Helper()
	for range times {
		for _, s := range n.servers {
			s.DigestTick()
		}
		n.run(t)
	}
}

// TestLostUpdateRepairedInQuickRounds (issue 18): an owner's update lost
// on its way to a peer that saw nothing change (at N=300 a peer resolved
// a joiner's name to nothing for 5.6 s after the rest agreed, until its
// own 10 s digest round) reaches it in the digest rounds that follow the
// change, not at the next GossipInterval: the owner's digest differs at
// b, b digests back, and pulls the owner from the summary it gets.
func TestLostUpdateRepairedInQuickRounds(t *testing.T) {
	a, b := peerKey(1), peerKey(2)
	n := memServers(t, a, b)
	n.rounds(t, quickRounds) // the arrivals' quick rounds
	n.rounds(t, 1)           // and the periodic round: none is due now
	n.loseEntry(t, a, b, "web", "10.32.0.5")
	n.rounds(t, quickRounds)
	if got, _ := n.servers[b].Lookup("web.weave.local"); len(got) != 1 {
		t.Fatalf("b resolves web to %v after %d rounds; counters a %v, b %v", got, quickRounds, n.servers[a].Counters(), n.servers[b].Counters())
	}
	if c := n.servers[b].Counters(); c["dns_digest_back"] == 0 || c["dns_pull_sent"] == 0 || c["dns_pull_repaired"] != 1 {
		t.Errorf("b repaired without a digest back and a pull, or the repair was not counted: %v", c)
	}
}

// TestLostWelcomeRepairedInQuickRounds (issue 18): a joiner whose welcome
// from an old peer was lost (a joiner at N=300 lacked an old peer's name
// for 6 s, until its first 10 s digest round) gets the name in the quick
// rounds its arrivals start.
func TestLostWelcomeRepairedInQuickRounds(t *testing.T) {
	a, j := peerKey(1), peerKey(2)
	n := memServers(t, a)
	must(t, n.servers[a].AddEntry("db", netip.MustParseAddr("10.32.0.7"), "c1"))
	n.rounds(t, quickRounds+1)
	js, err := New(Config{Self: j, Upstreams: []string{"127.0.0.1:1"}, GossipInterval: -1, Transport: memTransport{n, j}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { js.Close() })
	n.servers[j] = js
	n.drop = func(m memMsg) bool { return m.to == j }
	n.servers[a].PeersChanged([]key.Public{j}, nil)
	js.SetReachable([]key.Public{a})
	n.run(t)
	n.drop = nil
	if got, _ := js.Lookup("db"); len(got) != 0 {
		t.Fatalf("setting up: j has db: %v", got)
	}
	n.rounds(t, quickRounds)
	if got, _ := js.Lookup("db"); len(got) != 1 {
		t.Fatalf("j resolves db to %v after %d rounds; counters %v", got, quickRounds, js.Counters())
	}
}

// TestQuietRoundsCostOneDigest: with nothing changing, the rounds after
// the quick ones send a digest each GossipInterval, not each second.
func TestQuietRoundsCostOneDigest(t *testing.T) {
	n := memServers(t, peerKey(1), peerKey(2), peerKey(3))
	n.rounds(t, quickRounds+1)
	var sent uint64
	for _, s := range n.servers {
		sent += s.Counters()["dns_digest_sent"]
	}
	n.rounds(t, 3) // seconds: no GossipInterval has passed
	var after uint64
	for _, s := range n.servers {
		after += s.Counters()["dns_digest_sent"]
	}
	if after != sent {
		t.Errorf("%d digests in 3 quiet seconds", after-sent)
	}
}

// failTransport refuses every send: no route to anyone.
type failTransport struct{}

func (failTransport) Broadcast([]byte) {}
func (failTransport) Send(key.Public, []byte) error {
	return fmt.Errorf("no route")
}

// TestSendFailureCounted: a message to one peer the transport cannot
// route (a welcome, a digest, a pull's answer) is counted, not lost
// silently.
func TestSendFailureCounted(t *testing.T) {
	s, err := New(Config{Self: selfKey, Upstreams: []string{"127.0.0.1:1"}, GossipInterval: -1, Transport: failTransport{}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	must(t, s.AddEntry("web", netip.MustParseAddr("10.32.0.5"), ""))
	s.PeersChanged([]key.Public{peerKey(2)}, nil) // a welcome
	s.SendDigest(peerKey(2))
	if got := s.Counters()["dns_send_failed"]; got != 2 {
		t.Errorf("dns_send_failed %d, want 2", got)
	}
}

// TestRepairModel: the servers alone (memory transport, one DigestTick a
// second, nothing lost but a share of a joiner's broadcast of its name)
// at 300 and 1,000 peers. Every peer ends with the name; -v logs how many
// lacked it after each quick round, with the peers having seen the joiner
// arrive just before its name came (their own quick rounds running) and
// not (only the others' digests reach them). What the quick rounds leave
// is repaired by the periodic rounds (here each server's SendDigest to a
// random peer).
func TestRepairModel(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 servers")
	}
	for _, n := range []int{300, 1000} {
		for _, arrived := range []bool{true, false} {
			for _, loss := range []float64{0.3, 0.7} {
				repairModel(t, n, arrived, loss)
			}
		}
	}
}

func repairModel(t *testing.T, n int, arrived bool, loss float64) {
	keys := make([]key.Public, n)
	for i := range keys {
		keys[i] = ownerKey(i)
	}
	net := &memNet{servers: map[key.Public]*Server{}}
	for _, k := range keys {
		s, err := New(Config{Self: k, Upstreams: []string{"127.0.0.1:1"}, GossipInterval: -1, Transport: memTransport{net, k}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		net.servers[k] = s
	}
	j := keys[0]
	others := keys[1:]
	for _, k := range others {
		net.servers[k].SetReachable(others)
	}
	net.run(t)
	net.rounds(t, quickRounds) // the arrivals among the others
	if !arrived {
		// j arrives, and its name comes after the quick rounds.
		for _, k := range others {
			net.servers[k].PeersChanged([]key.Public{j}, nil)
		}
		net.servers[j].SetReachable(others)
		net.run(t)
		net.rounds(t, quickRounds)
	} else {
		for _, k := range others {
			net.servers[k].PeersChanged([]key.Public{j}, nil)
		}
		net.servers[j].SetReachable(others)
		net.run(t)
	}
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	net.drop = func(m memMsg) bool { return m.from == j && rng.Float64() < loss }
	must(t, net.servers[j].AddEntry("joiner", netip.MustParseAddr("10.32.0.9"), ""))
	net.run(t)
	net.drop = nil
	lacking := func() int {
		c := 0
		for _, s := range net.servers {
			if got, _ := s.Lookup("joiner"); len(got) == 0 {
				c++
			}
		}
		return c
	}
	left := []int{lacking()}
	for range quickRounds {
		net.rounds(t, 1)
		left = append(left, lacking())
	}
	periodic := 0
	for ; lacking() > 0 && periodic < 100; periodic++ {
		for _, k := range keys {
			net.servers[k].SendDigest(keys[rng.IntN(n)])
		}
		net.run(t)
	}
	t.Logf("N=%d, %.0f %% of the broadcast lost, arrival seen just before: %v: lacking the name at the start and after each quick round %v, then %d periodic rounds", n, 100*loss, arrived, left, periodic)
	if l := lacking(); l > 0 {
		t.Errorf("N=%d: %d peers lack the joiner's name after %d periodic rounds", n, l, periodic)
	}
}

// TestLostEarlierUpdateRepairedByDigests (issue 18): a peer that lost an
// owner's update and got the next one holds the owner's newest version,
// so digests of newest versions agree; it still gets the lost name within
// the rounds after the change, without the owner's anti-entropy broadcast
// (which came every N seconds: 17 minutes at N=1,000).
func TestLostEarlierUpdateRepairedByDigests(t *testing.T) {
	a, b, c := peerKey(1), peerKey(2), peerKey(3)
	n := memServers(t, a, b, c)
	n.rounds(t, quickRounds+1)
	n.loseEntry(t, a, b, "web", "10.32.0.5")
	must(t, n.servers[a].AddEntry("db", netip.MustParseAddr("10.32.0.6"), "c2"))
	n.run(t)
	if got, _ := n.servers[b].Lookup("db"); len(got) != 1 {
		t.Fatalf("setting up: b lacks db: %v", got)
	}
	n.rounds(t, quickRounds)
	if got, _ := n.servers[b].Lookup("web"); len(got) != 1 {
		t.Fatalf("b resolves web to %v after the update after it and %d rounds; counters a %v, b %v", got, quickRounds, n.servers[a].Counters(), n.servers[b].Counters())
	}
}

// TestStillRoundSendsNoState (issue 18): in a mesh that agrees, an
// anti-entropy round (Tick) sends nothing: digests repair. It broadcast
// each owner's state to every peer, a state a second at each peer of a
// mesh of any size, the most of an idle simulated peer's traffic at
// N=1,000. An owner of more than fullUpdateMax entries, whose updates
// carry only the change, and a transport that cannot send to one peer
// (no digests) keep the broadcast, and it repairs.
func TestStillRoundSendsNoState(t *testing.T) {
	var keys []key.Public
	for i := range 20 {
		keys = append(keys, peerKey(byte(10+i)))
	}
	n := memServers(t, keys...)
	for i, k := range keys {
		must(t, n.servers[k].AddEntry(fmt.Sprintf("c%d", i), netip.AddrFrom4([4]byte{10, 32, 1, byte(i)}), "c"))
	}
	n.run(t)
	n.rounds(t, quickRounds+1)
	for _, s := range n.servers {
		s.Tick()
	}
	if len(n.queue) != 0 {
		t.Fatalf("a still round sent %d messages", len(n.queue))
	}

	// Many entries: the round broadcasts, and repairs a lost one.
	big := n.servers[keys[0]]
	for i := range fullUpdateMax {
		must(t, big.AddEntry(fmt.Sprintf("m%d", i), netip.AddrFrom4([4]byte{10, 33, 1, byte(i)}), "m"))
	}
	n.run(t)
	n.loseEntry(t, keys[0], keys[1], "lost", "10.34.0.1")
	must(t, big.AddEntry("later", netip.MustParseAddr("10.34.0.2"), "m"))
	n.run(t)
	big.Tick()
	if len(n.queue) == 0 {
		t.Fatalf("the round of an owner of %d entries sent nothing", fullUpdateMax+3)
	}
	n.run(t)
	if got, _ := n.servers[keys[1]].Lookup("lost"); len(got) != 1 {
		t.Fatalf("a name of an owner of many entries not repaired by its round: %v", got)
	}

	// No Sender: the round broadcasts.
	tr := &countingTransport{}
	s := startServer(t, func(c *Config) { c.Transport = tr })
	must(t, s.AddEntry("web", netip.MustParseAddr("10.32.0.5"), "c1"))
	tr.msgs = nil
	s.Tick()
	if len(tr.msgs) != 1 {
		t.Fatalf("%d broadcasts in a round without a Sender", len(tr.msgs))
	}
}
