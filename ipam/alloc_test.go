package ipam

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// loopNet delivers messages synchronously after the sender returns.
type loopNet struct {
	peers map[key.Public]*Allocator
	queue []simMsg2
}

type simMsg2 struct {
	from, to key.Public
	b        []byte
}

type loopTransport struct {
	n    *loopNet
	self key.Public
}

func (t loopTransport) Broadcast(b []byte) {
	for p := range t.n.peers {
		if p != t.self {
			t.n.queue = append(t.n.queue, simMsg2{t.self, p, b})
		}
	}
}

func (t loopTransport) Send(to key.Public, b []byte) error {
	t.n.queue = append(t.n.queue, simMsg2{t.self, to, b})
	return nil
}

func (n *loopNet) run(t testing.TB) {
	for len(n.queue) > 0 {
		m := n.queue[0]
		n.queue = n.queue[1:]
		if a := n.peers[m.to]; a != nil {
			if err := a.HandleMessage(m.from, m.b); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func openTest(t testing.TB, n *loopNet, self key.Public, path string) *Allocator {
	a, err := Open(Config{Self: self, Private: privOf(self), Range: netip.MustParsePrefix("10.32.0.0/24"), Path: path, NoSync: true,
		Transport: loopTransport{n, self}, Reserved: []netip.Addr{netip.MustParseAddr("10.32.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	n.peers[self] = a
	return a
}

func TestAllocatorJoinClaimRestart(t *testing.T) {
	dir := t.TempDir()
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openTest(t, n, pk(0), filepath.Join(dir, "a.db"))
	b := openTest(t, n, pk(1), filepath.Join(dir, "b.db"))
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	a.SetPeers([]key.Public{pk(1)})
	b.SetPeers([]key.Public{pk(0)})
	n.run(t)

	// a never hands out the network, broadcast or reserved addresses.
	got, err := a.Allocate("c1")
	if err != nil || got != netip.MustParseAddr("10.32.0.2") {
		t.Fatalf("first allocation = %v, %v", got, err)
	}
	if again, _ := a.Allocate("c1"); again != got {
		t.Fatalf("Allocate not idempotent: %v", again)
	}
	// b has no space: it asks a and gets the upper half of a's largest block.
	if _, err := b.Allocate("d1"); !errors.Is(err, ErrWaitingForSpace) {
		t.Fatalf("b.Allocate before space: %v", err)
	}
	n.run(t)
	bAddr, err := b.Allocate("d1")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmtPrefixes(b.Prefixes(pk(1))); got != "[10.32.0.192/26]" {
		t.Fatalf("b owns %s", got)
	}
	if got := fmtPrefixes(a.Prefixes(pk(1))); got != "[10.32.0.192/26]" {
		t.Fatalf("a sees b own %s", got)
	}

	claims := []struct {
		name string
		on   *Allocator
		addr string
		want error
		msg  string
	}{
		{"own free", a, "10.32.0.9", nil, ""},
		{"same id again", a, "10.32.0.9", nil, ""},
		{"taken", b, bAddr.String(), ErrAddressTaken, "in use"},
		{"other peer's", a, "10.32.0.200", ErrNotOwner, pk(1).Name()},
		{"reserved", a, "10.32.0.1", ErrReserved, ""},
		{"broadcast", b, "10.32.0.255", ErrReserved, ""},
		{"outside", a, "10.99.0.1", ErrNotInRange, ""},
	}
	for _, c := range claims {
		t.Run(c.name, func(t *testing.T) {
			id := "k"
			if c.name == "taken" {
				id = "other"
			}
			err := c.on.Claim(netip.MustParseAddr(c.addr), id)
			if !errors.Is(err, c.want) || (err != nil && !strings.Contains(err.Error(), c.msg)) {
				t.Fatalf("Claim(%s) = %v, want %v", c.addr, err, c.want)
			}
		})
	}
	if err := Check([]PeerView{a.View(), b.View()}); err != nil {
		t.Fatal(err)
	}

	// Restart b (kill -9 is the same to bbolt: every call committed).
	before := b.Allocations()
	b.Close()
	b = openTest(t, n, pk(1), filepath.Join(dir, "b.db"))
	if fmt.Sprint(b.Allocations()) != fmt.Sprint(before) {
		t.Fatalf("allocations after restart %v, want %v", b.Allocations(), before)
	}
	if got := fmtPrefixes(b.Prefixes(pk(1))); got != "[10.32.0.192/26]" {
		t.Fatalf("b owns %s after restart", got)
	}
	if n, _ := b.Free("d1"); n != 1 {
		t.Fatalf("Free = %d", n)
	}
	// A state file of another peer is refused.
	a.Close()
	if _, err := Open(Config{Self: pk(2), Private: privOf(pk(2)), Range: netip.MustParsePrefix("10.32.0.0/24"), Path: filepath.Join(dir, "a.db")}); err == nil {
		t.Fatal("opened another peer's state")
	}
}

func TestTwoNetworksRefuse(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openTest(t, n, pk(0), "")
	b := openTest(t, n, pk(1), "")
	a.Seed()
	b.Seed()
	// Both used: neither gives way (an unused one would, giveway.go).
	for _, x := range []*Allocator{a, b} {
		if _, err := x.Allocate("c1"); err != nil {
			t.Fatal(err)
		}
	}
	ra, rb := a.View().Ring, b.View().Ring
	err := a.HandleMessage(pk(1), b.RingMessage())
	if !errors.Is(err, ErrSeedMismatch) || !strings.Contains(err.Error(), pk(0).Name()) || !strings.Contains(err.Error(), pk(1).Name()) {
		t.Fatalf("err = %v", err)
	}
	if !a.View().Ring.Equal(ra) || !b.View().Ring.Equal(rb) {
		t.Fatal("a refused merge changed a ring")
	}
	if st := a.Status(); st.Err == "" || st.Counters["ipam_ring_refused"] != 1 {
		t.Fatalf("status %+v", st)
	}
	if err := a.HandleMessage(pk(1), []byte{1, 1, 2}); !errors.Is(err, ErrMalformed) || a.Status().Counters["ipam_message_malformed"] != 1 {
		t.Fatalf("malformed: %v", err)
	}
}

func TestReclaim(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	now := time.Unix(1e9, 0)
	var as []*Allocator
	for i := range 3 {
		a, err := Open(Config{Self: pk(i), Private: privOf(pk(i)), Range: netip.MustParsePrefix("10.32.0.0/24"), Transport: loopTransport{n, pk(i)},
			Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		n.peers[pk(i)] = a
		as = append(as, a)
	}
	as[0].Seed()
	for i, a := range as {
		var r []key.Public
		for j := range as {
			if j != i {
				r = append(r, pk(j))
			}
		}
		a.SetPeers(r)
	}
	n.run(t)
	for _, a := range as[1:] {
		a.Allocate("x")
		n.run(t)
	}
	// Peer 2 dies. Peers 0 and 1 both reclaim it automatically.
	delete(n.peers, pk(2))
	as[0].SetPeers([]key.Public{pk(1)})
	as[1].SetPeers([]key.Public{pk(0)})
	gone := map[key.Public]time.Time{pk(2): now.Add(-time.Hour)}
	if got := as[0].Reclaim(gone, 2*time.Hour); len(got) != 0 {
		t.Fatalf("reclaimed too early: %v", got)
	}
	as[0].Reclaim(gone, time.Minute)
	as[1].Reclaim(gone, time.Minute)
	for range 3 {
		n.run(t)
		as[0].Tick()
		as[1].Tick()
	}
	n.run(t)
	if err := Check([]PeerView{as[0].View(), as[1].View()}); err != nil {
		t.Fatal(err)
	}
	r := as[1].View().Ring
	if len(r.Spans(pk(2))) != 0 {
		t.Fatal("dead peer still owns space")
	}
	if heir, _ := r.doneTransfer(pk(2)); heir != pk(0) {
		t.Fatalf("heir %s, want the smaller key", heir.Name())
	}
}

func BenchmarkAllocate(b *testing.B) {
	for _, bc := range []struct {
		name string
		path func() string
	}{
		{"memory", func() string { return "" }},
		{"bbolt-nosync", func() string { return filepath.Join(b.TempDir(), "s.db") }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			a, err := Open(Config{Self: pk(0), Private: privOf(pk(0)), Range: netip.MustParsePrefix("10.32.0.0/12"), Path: bc.path(), NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			a.Seed()
			i := 0
			for b.Loop() {
				id := fmt.Sprint("c", i)
				if _, err := a.Allocate(id); err != nil {
					b.Fatal(err)
				}
				if i%1000 == 999 { // keep the table at ~1000 entries
					for j := i - 999; j <= i; j++ {
						a.Free(fmt.Sprint("c", j))
					}
				}
				i++
			}
		})
	}
}

// TestUntouchedNetworkGivesWay: a peer that launched alone (seeding its own
// network) and then connects to another one joins it, as long as its own
// network was never used; a used network never gives way.
func TestUntouchedNetworkGivesWay(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	small, large := openTest(t, n, pk(0), ""), openTest(t, n, pk(1), "")
	small.Seed()
	large.Seed()
	smallSeed := small.Status().Seed
	// Both untouched: the larger seed gives way, the smaller keeps refusing.
	if err := large.HandleMessage(pk(0), small.RingMessage()); err != nil {
		t.Fatalf("untouched larger seed refused: %v", err)
	}
	if st := large.Status(); st.Seed != smallSeed || st.Counters["ipam_seed_abandoned"] != 1 || st.Err != "" {
		t.Fatalf("after giving way: %+v", st)
	}

	used, fresh := openTest(t, n, pk(2), ""), openTest(t, n, pk(0x10), "")
	used.Seed()
	fresh.Seed()
	if _, err := used.Allocate("c1"); err != nil {
		t.Fatal(err)
	}
	freshRing := fresh.RingMessage()
	n.queue = nil
	if err := used.HandleMessage(pk(0x10), freshRing); err != nil {
		t.Fatalf("a used network took a fresh one's ring as an error: %v", err)
	}
	if st := used.Status(); st.Seed.Peer != pk(2) || st.Counters["ipam_ring_other_network_gives_way"] != 1 || st.Err != "" {
		t.Fatalf("a used network gave way to a fresh one: %+v", st)
	}
	// It answers with its own ring, so the fresh peer need not wait for
	// anti-entropy.
	if len(n.queue) != 1 || n.queue[0].to != pk(0x10) {
		t.Fatalf("the used network's answer: %d messages queued", len(n.queue))
	}
	n.queue = nil
	if err := fresh.HandleMessage(pk(2), used.RingMessage()); err != nil {
		t.Fatalf("untouched network refused a used one: %v", err)
	}
	if fresh.Status().Seed != used.Status().Seed {
		t.Fatal("fresh peer did not join the used network")
	}

	// A network that has grown (a grant: two owners) but holds no
	// container is still unused: it gives way to one with the smaller
	// seed, which keeps its own.
	tiny, big := openTest(t, n, pk(0), ""), openTest(t, n, pk(0x20), "")
	tiny.Seed()
	big.Seed()
	if !seedLess(tiny.Status().Seed, big.Status().Seed) {
		t.Fatal("test keys: tiny's seed must be the smaller")
	}
	n.peers = map[key.Public]*Allocator{pk(0x20): big}
	big.SetPeers([]key.Public{pk(0x21)})
	if err := big.HandleMessage(pk(0x21), AppendRequestMessage(nil, big.Status().Seed)); err != nil {
		t.Fatal(err)
	}
	if len(big.Status().Peers) != 2 || big.View().Ring.Used {
		t.Fatalf("big did not grant space, or a grant made it used: %+v", big.Status().Peers)
	}
	if err := tiny.HandleMessage(pk(0x20), big.RingMessage()); err != nil || tiny.Status().Seed.Peer != pk(0) {
		t.Fatalf("the smaller seed gave way to a grown network holding no container: %v", err)
	}
	if err := big.HandleMessage(pk(0), tiny.RingMessage()); err != nil || big.Status().Seed != tiny.Status().Seed {
		t.Fatalf("a grown network holding no container did not give way to the smaller seed: %v", err)
	}
	// A one-peer network whose only use is an allocation is used all the
	// same: an untouched network with a smaller seed gives way to it.
	lone, fresh2 := openTest(t, n, pk(0x40), ""), openTest(t, n, pk(0), "")
	lone.Seed()
	fresh2.Seed()
	if _, err := lone.Allocate("c1"); err != nil {
		t.Fatal(err)
	}
	if err := fresh2.HandleMessage(pk(0x40), lone.RingMessage()); err != nil || fresh2.Status().Seed != lone.Status().Seed {
		t.Fatalf("untouched smaller seed did not join a used one-peer network: %v", err)
	}
	if err := lone.HandleMessage(pk(0), fresh2.RingMessage()); err != nil {
		t.Fatalf("after giving way the rings agree, yet: %v", err)
	}
	if err := Check(nil); err != nil {
		t.Fatal(err)
	}
}

func TestLeaveHandsEverythingToOnePeer(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, b, c := openTest(t, n, pk(5), ""), openTest(t, n, pk(3), ""), openTest(t, n, pk(4), "")
	a.Seed()
	all := []key.Public{pk(3), pk(4), pk(5)}
	for _, x := range []*Allocator{a, b, c} {
		x.SetPeers(all)
	}
	a.Gossip()
	n.run(t)
	if _, err := b.Allocate("x"); !errors.Is(err, ErrWaitingForSpace) {
		t.Fatalf("b allocate before space: %v", err)
	}
	n.run(t)
	if _, err := a.Allocate("mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Leave(); !errors.Is(err, ErrStillAllocated) {
		t.Fatalf("leave with an allocation: %v", err)
	}
	a.Free("mine")
	heir, err := a.Leave()
	if err != nil || heir != pk(3) {
		t.Fatalf("leave = %v, %v; want the smallest reachable key", heir.Name(), err)
	}
	n.run(t)
	for _, x := range []*Allocator{a, b, c} {
		if ps := x.Prefixes(pk(5)); len(ps) != 0 {
			t.Fatalf("the leaver still owns %v in some view", ps)
		}
	}
	if err := Check([]PeerView{a.View(), b.View(), c.View()}); err != nil {
		t.Fatal(err)
	}
}

// A donor that does not answer (cut off by a partition the daemon has not
// noticed yet, or with nothing to give) must not hold a request forever:
// after RequestTimeout the next request goes to another reachable donor.
func TestSilentDonorIsPassedOver(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, b := openTest(t, n, pk(0), ""), openTest(t, n, pk(1), "")
	now := time.Unix(1e9, 0)
	c, err := Open(Config{Self: pk(2), Private: privOf(pk(2)), Range: netip.MustParsePrefix("10.32.0.0/24"), NoSync: true,
		Transport: loopTransport{n, pk(2)}, Reserved: []netip.Addr{netip.MustParseAddr("10.32.0.1")},
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	n.peers[pk(2)] = c
	a.Seed()
	all := []key.Public{pk(0), pk(1), pk(2)}
	for _, x := range []*Allocator{a, b, c} {
		x.SetPeers(all)
	}
	a.Gossip()
	n.run(t)
	if _, err := b.Allocate("b1"); !errors.Is(err, ErrWaitingForSpace) {
		t.Fatalf("b allocate before space: %v", err)
	}
	n.run(t)
	if _, err := b.Allocate("b1"); err != nil {
		t.Fatal(err)
	}
	n.run(t)

	if _, err := c.Allocate("c1"); !errors.Is(err, ErrWaitingForSpace) {
		t.Fatalf("c allocate before space: %v", err)
	}
	first := c.Status().Donor
	// The first donor never hears anything from c.
	run := func() {
		var kept []simMsg2
		for _, m := range n.queue {
			if m.to != first || m.from != pk(2) {
				kept = append(kept, m)
			}
		}
		n.queue = kept
		n.run(t)
	}
	run()
	for i := 0; i < 3; i++ {
		now = now.Add(3 * time.Second)
		c.Tick()
		run()
		if _, err := c.Allocate("c1"); err == nil {
			if err := Check([]PeerView{a.View(), b.View(), c.View()}); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("c got no space after its first donor %s stayed silent", first.Name())
}

func TestWantSpaceBeforeFirstAllocation(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, b := openTest(t, n, pk(1), ""), openTest(t, n, pk(2), "")
	a.Seed()
	for _, x := range []*Allocator{a, b} {
		x.SetPeers([]key.Public{pk(1), pk(2)})
	}
	b.WantSpace() // no ring yet: remembered
	a.Gossip()
	n.run(t)
	if len(b.Prefixes(pk(2))) == 0 {
		t.Fatal("a joined peer that wants space got none once the ring arrived")
	}
	if _, err := b.Allocate("c"); err != nil {
		t.Fatalf("allocate after WantSpace: %v", err)
	}
}

// TestPeersChangedMatchesSetPeers gives one allocator the whole reachable
// set after every change (SetPeers) and another only the peers that
// changed (PeersChanged), and checks that both hold the same set after
// every step.
func TestPeersChangedMatchesSetPeers(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	full := openTest(t, n, pk(0), "")
	inc := openTest(t, n, pk(1), "")
	up := map[key.Public]bool{}
	for step := range 300 {
		var ups, downs []key.Public
		for _, i := range rng.Perm(12)[:1+rng.IntN(3)] {
			p := pk(2 + i)
			if up[p] {
				delete(up, p)
				downs = append(downs, p)
			} else {
				up[p] = true
				ups = append(ups, p)
			}
		}
		full.SetPeers(slices.Collect(maps.Keys(up)))
		inc.PeersChanged(ups, downs)
		full.mu.Lock()
		a := maps.Clone(full.reachable)
		full.mu.Unlock()
		inc.mu.Lock()
		b := maps.Clone(inc.reachable)
		inc.mu.Unlock()
		if !maps.Equal(a, b) || !maps.Equal(a, up) {
			t.Fatalf("step %d: SetPeers holds %d peers, PeersChanged %d, want %d", step, len(a), len(b), len(up))
		}
	}
}

// countingStore counts ring saves.
type countingStore struct {
	*memStore
	saves int
}

func (c *countingStore) saveRing(b []byte) error { c.saves++; return c.memStore.saveRing(b) }

// TestMergedRingSavedEveryTenSeconds: a ring changed only by merges is
// saved by Tick at most every mergedSaveInterval, not each second (the
// whole ring encoded per peer per second of churn), and on Close.
func TestMergedRingSavedEveryTenSeconds(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	a := openTest(t, n, pk(0), "")
	st := &countingStore{memStore: newMemStore()}
	b, err := Open(Config{Self: pk(1), Private: privOf(pk(1)), Range: netip.MustParsePrefix("10.32.0.0/24"), NoSync: true,
		Transport: loopTransport{n, pk(1)}, Now: clock, store: st})
	if err != nil {
		t.Fatal(err)
	}
	n.peers[pk(1)] = b
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	a.SetPeers([]key.Public{pk(1)})
	n.run(t)
	a.SendRing(pk(1), false) // b adopts a's ring: a merge
	n.run(t)
	b.Tick() // the first save of the merged ring
	first := st.saves
	if first == 0 {
		t.Fatal("the merged ring was never saved")
	}
	for i := range 9 {
		if _, err := a.Allocate(fmt.Sprintf("c%d", i)); err != nil {
			t.Fatal(err)
		}
		a.Tick() // a publishes its free count; b merges it
		n.run(t)
		now = now.Add(time.Second)
		b.Tick()
	}
	if st.saves != first {
		t.Fatalf("b saved its merged ring %d times in 9 s, want 0 until %v had passed", st.saves-first, mergedSaveInterval)
	}
	now = now.Add(time.Second)
	b.Tick()
	if st.saves != first+1 {
		t.Fatalf("b saved %d times after %v, want 1", st.saves-first, mergedSaveInterval)
	}
	if _, err := a.Allocate("last"); err != nil {
		t.Fatal(err)
	}
	a.Tick()
	n.run(t)
	b.Close()
	if st.saves != first+2 {
		t.Fatalf("Close did not save the merged ring (%d saves)", st.saves-first)
	}
}
