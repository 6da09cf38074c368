package ipam

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// The simulation: n peers of one network exchange messages through an
// in-memory network that partitions, heals, drops and reorders, while a
// random sequence of operations runs. The invariants are checked after
// every step; at the end the network heals and must converge.

type simMsg struct {
	from, to int
	b        []byte
	due      int // joinSim with latency: the step it may be delivered at (0: not stamped yet)
}

type simPeer struct {
	i     int
	key   key.Public
	a     *Allocator
	mem   *memStore // restart from encoded state
	path  string    // or from bbolt
	dead  bool
	ids   []string
	nextN int
}

type sim struct {
	t     testing.TB
	rng   *rand.Rand
	peers []*simPeer
	queue []simMsg
	group []int
	now   time.Time
	drop  float64
	log   []string
	seed  uint64 // reproduce a failure: newSim(t, seed, ...)
	// networks: peers hold rings of different networks (meet_test.go),
	// so a seed mismatch is an expected answer, not a failure.
	networks bool
	// prefix is the range (10.32.0.0/22 when not set).
	prefix netip.Prefix
	// reach, when set, is whom each peer reaches (join_test.go): its
	// broadcasts and sends go only there, as over discovery's routes.
	reach map[int]map[int]bool
	// sent and sentBytes count the messages queued.
	sent, sentBytes int
}

type simTransport struct {
	s    *sim
	from int
}

var _ Transport = simTransport{}

func (tr simTransport) Broadcast(b []byte) {
	for _, p := range tr.s.peers {
		if p.i != tr.from && !p.dead && (tr.s.reach == nil || tr.s.reach[tr.from][p.i]) {
			tr.s.sent, tr.s.sentBytes = tr.s.sent+1, tr.s.sentBytes+len(b)
			tr.s.queue = append(tr.s.queue, simMsg{from: tr.from, to: p.i, b: b})
		}
	}
}

func (tr simTransport) Send(to key.Public, b []byte) error {
	for _, p := range tr.s.peers {
		if p.key == to && !p.dead && tr.s.group[p.i] == tr.s.group[tr.from] && (tr.s.reach == nil || tr.s.reach[tr.from][p.i]) {
			tr.s.sent, tr.s.sentBytes = tr.s.sent+1, tr.s.sentBytes+len(b)
			tr.s.queue = append(tr.s.queue, simMsg{from: tr.from, to: p.i, b: b})
			return nil
		}
	}
	return errors.New("unreachable")
}

func newSim(t testing.TB, seed uint64, n int, useBolt bool) *sim {
	s := newSimUnseeded(t, seed, n, useBolt)
	if err := s.peers[0].a.Seed(); err != nil {
		t.Fatal(err)
	}
	s.setPeers()
	return s
}

// newSimUnseeded opens n peers, none of them seeded yet.
func newSimUnseeded(t testing.TB, seed uint64, n int, useBolt bool) *sim {
	s := &sim{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), group: make([]int, n), now: time.Unix(1e9, 0)}
	dir := ""
	if useBolt {
		dir = t.TempDir()
	}
	for i := range n {
		p := &simPeer{i: i, key: pk(i), mem: newMemStore()}
		if useBolt && i%2 == 0 {
			p.path = filepath.Join(dir, fmt.Sprintf("peer%d.db", i))
		}
		s.peers = append(s.peers, p)
		s.open(p)
	}
	return s
}

func (s *sim) open(p *simPeer) {
	rng := s.prefix
	if !rng.IsValid() {
		rng = netip.MustParsePrefix("10.32.0.0/22")
	}
	cfg := Config{
		Self: p.key, Private: privOf(p.key), Range: rng, Transport: simTransport{s, p.i},
		Now: func() time.Time { return s.now }, RequestTimeout: 3 * time.Second, NoSync: true,
		Reserved: []netip.Addr{netip.MustParseAddr("10.32.0.1")},
		Rand:     func() uint64 { return 0xfeed },
	}
	if p.path != "" {
		cfg.Path = p.path
	} else {
		cfg.store = p.mem
	}
	a, err := Open(cfg)
	if err != nil {
		s.t.Fatalf("open peer %d: %v", p.i, err)
	}
	p.a = a
}

func (s *sim) logf(format string, args ...any) {
	s.log = append(s.log, fmt.Sprintf(format, args...))
}

func (s *sim) alive() []*simPeer {
	var out []*simPeer
	for _, p := range s.peers {
		if !p.dead {
			out = append(out, p)
		}
	}
	return out
}

func (s *sim) setPeers() {
	for _, p := range s.alive() {
		var reach []key.Public
		for _, q := range s.alive() {
			if q != p && s.group[q.i] == s.group[p.i] {
				reach = append(reach, q.key)
			}
		}
		p.a.SetPeers(reach)
	}
}

// deliver delivers up to n queued messages in random order; messages
// across a partition or picked for dropping are lost.
func (s *sim) deliver(n int) {
	for ; n > 0 && len(s.queue) > 0; n-- {
		k := s.rng.IntN(len(s.queue))
		if s.rng.IntN(4) != 0 { // mostly in order
			k = 0
		}
		m := s.queue[k]
		s.queue = slices.Delete(s.queue, k, k+1)
		from, to := s.peers[m.from], s.peers[m.to]
		if to.dead || s.group[m.from] != s.group[m.to] || s.rng.Float64() < s.drop {
			continue
		}
		if err := to.a.HandleMessage(from.key, m.b); err != nil && !(s.networks && (errors.Is(err, ErrSeedMismatch) || errors.Is(err, ErrOtherNetwork))) {
			s.t.Fatalf("peer %d handling a message from %d: %v", m.to, m.from, err)
		}
	}
}

func (s *sim) check(step int) {
	var views []PeerView
	for _, p := range s.alive() {
		views = append(views, p.a.View())
	}
	if err := Check(views); err != nil {
		if testing.Verbose() {
			for _, v := range views {
				s.t.Logf("view of %s:", v.Self.Name())
				for _, e := range v.Ring.Entries {
					s.t.Logf("  %v owner %s v%d writer %s", u2a(e.Token), e.Owner.Name(), e.Version, e.Writer.Name())
				}
			}
		}
		s.t.Fatalf("sequence %d step %d: invariant broken: %v\nlast operations:\n%s", s.seed, step, err, strings.Join(s.log[max(0, len(s.log)-30):], "\n"))
	}
	for _, p := range s.alive() {
		if c := p.a.Conflicts(); len(c) > 0 {
			s.t.Fatalf("step %d: peer %d lost allocations %v", step, p.i, c)
		}
	}
}

func (s *sim) step(step int) {
	alive := s.alive()
	p := alive[s.rng.IntN(len(alive))]
	switch r := s.rng.IntN(100); {
	case r < 25:
		p.nextN++
		id := fmt.Sprintf("c%d-%d", p.i, p.nextN)
		addr, err := p.a.Allocate(id)
		s.logf("allocate %d %s: %v %v", p.i, id, addr, err)
		if err == nil {
			p.ids = append(p.ids, id)
		} else if !errors.Is(err, ErrWaitingForSpace) {
			s.t.Fatalf("allocate: %v", err)
		}
	case r < 35:
		if len(p.ids) == 0 {
			return
		}
		k := s.rng.IntN(len(p.ids))
		n, err := p.a.Free(p.ids[k])
		s.logf("free %d %s: %d %v", p.i, p.ids[k], n, err)
		p.ids = slices.Delete(p.ids, k, k+1)
	case r < 42:
		addr := u2a(a2u(netip.MustParseAddr("10.32.0.0")) + uint32(s.rng.IntN(1024)))
		p.nextN++
		id := fmt.Sprintf("k%d-%d", p.i, p.nextN)
		err := p.a.Claim(addr, id)
		s.logf("claim %d %v %s: %v", p.i, addr, id, err)
		switch {
		case err == nil:
			p.ids = append(p.ids, id)
		case errors.Is(err, ErrNotOwner), errors.Is(err, ErrAddressTaken), errors.Is(err, ErrReserved), errors.Is(err, ErrWaitingForSpace):
		default:
			s.t.Fatalf("claim: %v", err)
		}
	case r < 65:
		s.deliver(1 + s.rng.IntN(30))
	case r < 72:
		s.now = s.now.Add(time.Second)
		for _, q := range alive {
			q.a.Tick()
		}
	case r < 76: // partition into 2 or 3 groups
		g := 2 + s.rng.IntN(2)
		for i := range s.group {
			s.group[i] = s.rng.IntN(g)
		}
		s.logf("partition %v", s.group)
		s.setPeers()
	case r < 81: // heal
		clear(s.group)
		s.logf("heal")
		s.setPeers()
		for _, q := range alive {
			q.a.Gossip()
		}
	case r < 85: // restart (crash: in-flight messages to it are lost)
		s.logf("restart %d", p.i)
		p.a.Close()
		s.queue = slices.DeleteFunc(s.queue, func(m simMsg) bool { return m.to == p.i })
		s.open(p)
		s.setPeers()
		for _, id := range p.ids { // allocations survive
			if _, err := p.a.Allocate(id); err != nil {
				s.t.Fatalf("peer %d lost %s over a restart: %v", p.i, id, err)
			}
		}
	case r < 87: // a peer dies for good; one or two peers rmpeer it
		if len(alive) <= 5 {
			return
		}
		s.kill(p)
		alive = s.alive()
		n := 1 + s.rng.IntN(2)
		for range n {
			q := alive[s.rng.IntN(len(alive))]
			err := q.a.RemovePeer(p.key)
			s.logf("rmpeer %d by %d: %v", p.i, q.i, err)
		}
	case r < 89:
		s.drop = []float64{0, 0, 0.1, 0.3}[s.rng.IntN(4)]
	default:
		s.setPeers()
	}
}

// kill removes p for good. Its last ring state first reaches every peer:
// the documented hole (a grant that never left the dying peer's side of a
// partition) is outside what rmpeer can make safe.
func (s *sim) kill(p *simPeer) {
	s.logf("kill %d", p.i)
	msg := p.a.RingMessage()
	p.a.Close()
	p.dead = true
	s.queue = slices.DeleteFunc(s.queue, func(m simMsg) bool { return m.from == p.i || m.to == p.i })
	for _, q := range s.alive() {
		if msg != nil {
			if err := q.a.HandleMessage(p.key, msg); err != nil {
				s.t.Fatal(err)
			}
		}
	}
	s.setPeers()
}

// converge heals, re-issues rmpeer for dead peers whose transfers all
// failed, and runs gossip until quiet; then every ring must be equal, every
// dead owner handed over, and every peer able to allocate.
func (s *sim) converge() {
	s.drop = 0
	clear(s.group)
	s.setPeers()
	for round := range 60 {
		for _, p := range s.alive() {
			p.a.Gossip()
		}
		for len(s.queue) > 0 {
			s.deliver(len(s.queue))
		}
		s.now = s.now.Add(time.Second)
		for _, p := range s.alive() {
			p.a.Tick()
		}
		for len(s.queue) > 0 {
			s.deliver(len(s.queue))
		}
		if s.quiet() {
			break
		}
		if round%5 == 4 {
			for _, d := range s.peers {
				if d.dead {
					// Re-issue if every transfer failed; a peer whose own
					// transfer was withdrawn cannot, so rotate.
					al := s.alive()
					al[(round/5)%len(al)].a.RemovePeer(d.key)
				}
			}
		}
	}
	s.check(-1)
	alive := s.alive()
	r0 := alive[0].a.View().Ring
	for _, p := range alive[1:] {
		if r := p.a.View().Ring; !r.Equal(r0) {
			s.t.Fatalf("rings differ after convergence (peer %d %s vs %d %s)\n%s", alive[0].i, alive[0].key.Name(), p.i, p.key.Name(), ringDiff(r0, r))
		}
	}
	for _, d := range s.peers {
		if d.dead && len(r0.Spans(d.key)) > 0 {
			var b strings.Builder
			for _, tr := range r0.Transfers {
				fmt.Fprintf(&b, "  transfer dead=%d issuer=%d done=%v withdrawn=%v\n", tr.Dead[0]-1, tr.Issuer[0]-1, tr.Done, tr.Withdrawn)
			}
			for _, v := range r0.Votes {
				fmt.Fprintf(&b, "  vote voter=%d dead=%d issuer=%d seq=%d\n", v.Voter[0]-1, v.Dead[0]-1, v.Issuer[0]-1, v.Seq)
			}
			for _, p := range s.peers {
				fmt.Fprintf(&b, "  peer %d dead=%v spans=%v\n", p.i, p.dead, r0.Spans(p.key))
			}
			s.t.Fatalf("dead peer %d still owns %v\n%s", d.i, r0.Spans(d.key), b.String())
		}
	}
	for _, p := range alive {
		var err error
		for range 20 {
			if _, err = p.a.Allocate("final"); err == nil {
				break
			}
			s.now = s.now.Add(4 * time.Second)
			p.a.Tick()
			for len(s.queue) > 0 {
				s.deliver(len(s.queue))
			}
		}
		if err != nil && !s.full() {
			s.t.Fatalf("peer %d cannot allocate after convergence: %v", p.i, err)
		}
	}
	s.check(-2)
}

// quiet reports whether the rings agree and no dead peer owns space.
func (s *sim) quiet() bool {
	alive := s.alive()
	r0 := alive[0].a.View().Ring
	for _, p := range alive[1:] {
		if !p.a.View().Ring.Equal(r0) {
			return false
		}
	}
	for _, d := range s.peers {
		if d.dead && len(r0.Spans(d.key)) > 0 {
			return false
		}
	}
	return true
}

// full reports whether the whole range is allocated (or reserved).
func (s *sim) full() bool {
	n := 0
	for _, p := range s.alive() {
		n += len(p.a.View().Allocs)
	}
	return n >= 1024-3
}

func TestSimulation(t *testing.T) {
	// The race build's 50 sequences of 70 steps exercise a withdrawn
	// rmpeer (checked below); -short ran 40 of 60 steps and never did.
	seqs, steps := 200, 70
	if testing.Short() || raceEnabled {
		seqs = 50
	}
	var stats struct {
		done, withdrawn int
		grants          uint64
	}
	defer func() {
		t.Logf("transfers completed %d, withdrawn %d; grants %d", stats.done, stats.withdrawn, stats.grants)
		if !t.Failed() && (stats.done == 0 || stats.withdrawn == 0 || stats.grants == 0) {
			t.Errorf("the simulation did not exercise competing rmpeers and grants")
		}
	}()
	for seq := range seqs {
		s := newSim(t, uint64(seq), 10, seq%4 == 0)
		for i := range steps {
			s.step(i)
			s.check(i)
		}
		s.converge()
		r := s.alive()[0].a.View().Ring
		for _, tr := range r.Transfers {
			switch {
			case tr.Done:
				stats.done++
			case tr.Withdrawn:
				stats.withdrawn++
			}
		}
		for _, p := range s.peers {
			if !p.dead {
				stats.grants += p.a.Status().Counters["ipam_grant"]
			}
		}
		for _, p := range s.peers {
			if !p.dead {
				p.a.Close()
			}
		}
	}
}

// ringDiff describes how two rings differ (a failure's message).
func ringDiff(a, b *Ring) string {
	var sb strings.Builder
	if len(a.Entries) != len(b.Entries) {
		fmt.Fprintf(&sb, "entries %d vs %d\n", len(a.Entries), len(b.Entries))
	} else {
		for i := range a.Entries {
			if a.Entries[i] != b.Entries[i] {
				fmt.Fprintf(&sb, "entry %v: owner %s v%d vs owner %s v%d\n", u2a(a.Entries[i].Token), a.Entries[i].Owner.Name(), a.Entries[i].Version, b.Entries[i].Owner.Name(), b.Entries[i].Version)
			}
		}
	}
	fmt.Fprintf(&sb, "votes %d vs %d\n", len(a.Votes), len(b.Votes))
	for _, r := range []*Ring{a, b} {
		for _, t := range r.Transfers {
			fmt.Fprintf(&sb, "  transfer dead=%s issuer=%s done=%v withdrawn=%v accepted=%v cert=%d\n", t.Dead.Name(), t.Issuer.Name(), t.Done, t.Withdrawn, t.Accepted, len(t.Cert))
		}
		for _, v := range r.Votes {
			fmt.Fprintf(&sb, "  vote voter=%s dead=%s issuer=%s seq=%d\n", v.Voter.Name(), v.Dead.Name(), v.Issuer.Name(), v.Seq)
		}
		sb.WriteString("  --\n")
	}
	return sb.String()
}
