package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/dns"
	"github.com/weavewg/weavewg/ipam"
	"github.com/weavewg/weavewg/types/key"
)

// Config configures a Cluster.
type Config struct {
	// Seed drives every random choice of the cluster (which peer a joiner
	// dials first). Keys come from crypto/rand, so runs with one seed
	// follow the same script but not the same topology.
	Seed uint64
	// ConnLimit is each router's --conn-limit; 0 takes discovery's default.
	ConnLimit int
	// Range is the overlay range (default 10.32.0.0/12).
	Range netip.Prefix
	// Logger receives every part's logs, tagged with the node; nil: none.
	Logger *slog.Logger
	// RoutersOnly runs each node's router alone, with no allocator and
	// no name table (IPAM and DNS are nil): discovery's own figures.
	// Check checks the topology alone.
	RoutersOnly bool
	// HandshakeTimeout is each router's (discovery.Config); 0: the
	// daemon's 5 s. The simulated peers' handshakes share the process's
	// cores, which N hosts would each have alone: a build of hundreds
	// of peers on two shared cores stretches them past 5 s (at 1,000,
	// 1,774 of 3,507 failed handshakes timed out and were tried again,
	// more load still).
	HandshakeTimeout time.Duration
	// ReadTimeout is each router's (discovery.Config); 0: the daemon's
	// 95 s. At N=1,000 on a third of a shared core, connections fell
	// silent past 95 s during the build and closed by thousands, each
	// loss a new record version for everyone.
	ReadTimeout time.Duration
	// Trace, if set, receives each node's discovery.TraceEvents with the
	// node's index (a harness's per-joiner timeline); as
	// discovery.Config.Trace, it must return quickly and not call the
	// routers.
	Trace func(node int, ev discovery.TraceEvent)
}

// Cluster is a simulated mesh: nodes that join, leave and get partitioned.
// Its methods are safe for concurrent use.
type Cluster struct {
	cfg    Config
	Net    *Network
	Verify *VerifyCache
	// Records is the routers' one copy of each record's lists
	// (discovery.SharedRecords), as Verify is their one signature check.
	Records *discovery.SharedRecords
	secret  key.Secret

	// cache: what Check keeps of each node between calls (checkGroup).
	cacheMu sync.Mutex
	cache   map[*Node]*checkCache

	mu    sync.Mutex
	rng   *rand.Rand
	nodes []*Node // every node ever started, by Index
	alive map[int]bool
	group map[int]int
}

// New returns an empty cluster; the first Join creates the network.
func New(cfg Config) *Cluster {
	if !cfg.Range.IsValid() {
		cfg.Range = netip.MustParsePrefix("10.32.0.0/12")
	}
	c := &Cluster{
		cfg:     cfg,
		Net:     NewNetwork(),
		Verify:  NewVerifyCache(),
		Records: discovery.NewSharedRecords(),
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5ca1ab1e)),
		alive:   map[int]bool{},
		group:   map[int]int{},
		cache:   map[*Node]*checkCache{},
	}
	binary.BigEndian.PutUint64(c.secret[:], cfg.Seed^0x9e3779b97f4a7c15)
	copy(c.secret[8:], "weavewg simulated network secret")
	return c
}

// hostIP is node i's underlay address: 2001:db8::/32 is the documentation
// prefix, and nothing here leaves the process anyway.
func hostIP(i int) netip.Addr {
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
	binary.BigEndian.PutUint32(b[12:], uint32(i)+1)
	return netip.AddrFrom16(b)
}

// Join starts a new node. The first one creates the network (seeds the
// IPAM ring); every later one is given one live node to connect to, chosen
// at random, as `weavewg join` is given a token with one endpoint, and is
// in that node's partition group.
func (c *Cluster) Join() (*Node, error) {
	c.mu.Lock()
	i := len(c.nodes)
	cfg := nodeConfig{
		index:     i,
		ip:        hostIP(i),
		secret:    c.secret,
		rng:       c.cfg.Range,
		network:   c.Net,
		verify:    c.Verify.Verify,
		shared:    c.Records,
		connLimit: c.cfg.ConnLimit,
		hsTimeout: c.cfg.HandshakeTimeout,
		rdTimeout: c.cfg.ReadTimeout,
		seed:      i == 0,
		routers:   c.cfg.RoutersOnly,
		logger:    c.cfg.Logger,
	}
	if tr := c.cfg.Trace; tr != nil {
		cfg.trace = func(ev discovery.TraceEvent) { tr(i, ev) }
	}
	g := 0
	if i > 0 {
		live := c.aliveLocked()
		if len(live) == 0 {
			c.mu.Unlock()
			return nil, errors.New("sim: no live node to join")
		}
		b := live[c.rng.IntN(len(live))]
		cfg.bootstrap = []netip.AddrPort{b.Endpoint()}
		g = c.group[b.Index]
	}
	c.nodes = append(c.nodes, nil) // reserve the index
	c.mu.Unlock()
	c.Net.SetGroups(map[netip.Addr]int{cfg.ip: g})
	nd, err := startNode(cfg)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c.nodes[i] = nd
	c.alive[i] = true
	c.group[i] = g
	return nd, nil
}

// NextIndex is the index the next Join's node will have.
func (c *Cluster) NextIndex() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.nodes)
}

// Leave stops node i as a host that goes away does: its connections close
// and nothing is handed over.
func (c *Cluster) Leave(i int) {
	c.mu.Lock()
	if !c.alive[i] {
		c.mu.Unlock()
		return
	}
	delete(c.alive, i)
	nd := c.nodes[i]
	c.mu.Unlock()
	nd.close()
}

// Alive returns the live nodes by index.
func (c *Cluster) Alive() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.aliveLocked()
}

func (c *Cluster) aliveLocked() []*Node {
	out := make([]*Node, 0, len(c.alive))
	for i, nd := range c.nodes {
		if c.alive[i] {
			out = append(out, nd)
		}
	}
	return out
}

// Node returns node i (live or not).
func (c *Cluster) Node(i int) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Partition puts live nodes into groups (node index → group; unlisted
// nodes keep theirs). Connections across groups are cut and dials across
// them fail until Heal.
func (c *Cluster) Partition(groups map[int]int) {
	c.mu.Lock()
	ips := map[netip.Addr]int{}
	for i, g := range groups {
		if i < len(c.nodes) && c.nodes[i] != nil {
			c.group[i] = g
			ips[c.nodes[i].IP] = g
		}
	}
	c.mu.Unlock()
	c.Net.SetGroups(ips)
}

// Heal puts every node back into one group.
func (c *Cluster) Heal() {
	c.mu.Lock()
	groups := map[int]int{}
	for i := range c.nodes {
		groups[i] = 0
	}
	c.mu.Unlock()
	c.Partition(groups)
}

// Traffic returns the frames and bytes sent by every node so far.
func (c *Cluster) Traffic() (msgs, bytes uint64) {
	c.mu.Lock()
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()
	for _, nd := range nodes {
		if nd == nil {
			continue
		}
		if t := c.Net.Traffic(nd.IP); t != nil {
			msgs += t.Msgs.Load()
			bytes += t.Bytes.Load()
		}
	}
	return msgs, bytes
}

// Close stops every node.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, nd := range c.Alive() {
		wg.Go(func() { c.Leave(nd.Index) })
	}
	wg.Wait()
}

// Check returns nil when every live node agrees with the others of its
// partition group: it reaches exactly the group's live nodes and holds the
// same version of each one's record; its IPAM ring is the same; its DNS
// table answers each group member's name with the address IPAM gave that
// member's container, and no other node's name. Otherwise the error names
// the first disagreement found.
func (c *Cluster) Check() error { return c.check(!c.cfg.RoutersOnly) }

// aliveByGroup is the live nodes by partition group, and every node the
// cluster has made (live or gone), read at one moment.
func (c *Cluster) aliveByGroup() (map[int][]*Node, []*Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	byGroup := map[int][]*Node{}
	for _, nd := range c.aliveLocked() {
		byGroup[c.group[nd.Index]] = append(byGroup[c.group[nd.Index]], nd)
	}
	return byGroup, slices.Clone(c.nodes)
}

// CheckTopology is the topology part of Check alone: every live node
// reaches exactly its group's live nodes and holds the same version of
// each one's record.
func (c *Cluster) CheckTopology() error { return c.check(false) }

func (c *Cluster) check(full bool) error {
	byGroup, all := c.aliveByGroup()
	gs := make([]int, 0, len(byGroup))
	for g := range byGroup {
		gs = append(gs, g)
	}
	slices.Sort(gs)
	for _, g := range gs {
		if err := c.checkGroup(byGroup[g], all, full); err != nil {
			return fmt.Errorf("group %d: %w", g, err)
		}
	}
	return nil
}

// checkGroup checks one group in stages, each over every member before
// the next: the topology (each member's reachable set and record
// versions, as an order-free fingerprint), then addresses, the IPAM rings
// and the names. Most checks fail while the mesh is still settling, and
// a failure at the cheap stage no longer costs the rings and N lookups of
// every member: the whole check was O(N²) work each 100 ms of a wait, with
// a sort, a SHA-256, the whole encoded ring and N lookups per member.
// A member's ring fingerprint is kept until its allocator says the ring
// changed (Updated), and its names pass without N lookups when neither
// its table nor the group's expected names changed since they last did.
func (c *Cluster) checkGroup(members, all []*Node, full bool) error {
	in := make(map[key.Public]bool, len(members))
	for _, m := range members {
		in[m.Key] = true
	}
	// Each member's view as its router's kept fingerprint (O(1) for a
	// router whose records and routes did not change since the last
	// call); every member reaches itself, so members whose sums agree
	// and who reach len(members) peers reach exactly the group. Reading
	// each member's reachable set made every call O(N²): 2.8 % of the
	// N=1,000 simulation's CPU, every 100 ms of each wait. Its details
	// are read only to name a disagreement.
	var refTopo uint64
	var refNode *Node
	for _, nd := range members {
		fp, count := nd.Router.Fingerprint()
		if count != len(members) || refNode != nil && fp != refTopo {
			return topoWhy(nd, refNode, members, in, all)
		}
		if refNode == nil {
			refTopo, refNode = fp, nd
		}
	}
	if !full {
		return nil
	}
	for _, m := range members {
		if !m.Addr().IsValid() {
			return fmt.Errorf("%s has no address from IPAM yet (%s)", m.Name, ipamWhy(m, all))
		}
	}
	var refRing [sha256.Size]byte
	for i, nd := range members {
		ring := c.ringHash(nd)
		if i == 0 {
			refRing = ring
		} else if ring != refRing {
			return fmt.Errorf("%s and %s hold different IPAM rings%s", nd.Name, members[0].Name, ringDiff(nd.IPAM.RingMessage(), members[0].IPAM.RingMessage()))
		}
	}
	// What every member must answer: each group member's name with its
	// address, no other node's name.
	want := sha256.New()
	for _, o := range all {
		if o != nil {
			want.Write([]byte(o.Name))
			if in[o.Key] {
				b, _ := o.Addr().MarshalBinary()
				want.Write(b)
			}
			want.Write([]byte{0})
		}
	}
	var expect [sha256.Size]byte
	want.Sum(expect[:0])
	for _, nd := range members {
		snap := nd.DNS.Table().Snapshot()
		if c.namesPassed(nd, snap, expect) {
			continue
		}
		for _, o := range all {
			if o == nil {
				continue
			}
			got := snap.Lookup(o.Name)
			if in[o.Key] {
				if len(got) != 1 || got[0] != o.Addr() {
					return fmt.Errorf("%s resolves %s to %v, want %v", nd.Name, o.Name, got, o.Addr())
				}
			} else if len(got) != 0 {
				return fmt.Errorf("%s still resolves %s (gone or in another group) to %v", nd.Name, o.Name, got)
			}
		}
		c.noteNamesPassed(nd, snap, expect)
	}
	return nil
}

// topoWhy names how nd's view differs from the group's (ref's, the
// first member's; nil if nd is the first).
func topoWhy(nd, ref *Node, members []*Node, in map[key.Public]bool, all []*Node) error {
	reach := nd.Router.Reachable()
	for _, p := range reach {
		if !in[p.Key] {
			return fmt.Errorf("%s reaches %s, a node outside its group or gone", nd.Name, nameOf(p.Key, all))
		}
	}
	if len(reach) != len(members) {
		return fmt.Errorf("%s reaches %d of the group's %d nodes", nd.Name, len(reach), len(members))
	}
	if ref == nil {
		// Its fingerprint counted otherwise a moment ago: still moving.
		return fmt.Errorf("%s's view of the topology is changing", nd.Name)
	}
	return fmt.Errorf("%s and %s hold different versions of the topology", nd.Name, ref.Name)
}

// nameOf is the node name of k, or its key's short form.
func nameOf(k key.Public, all []*Node) string {
	for _, o := range all {
		if o != nil && o.Key == k {
			return o.Name
		}
	}
	return k.Name()
}

// checkCache is what Check keeps of each node between calls.
type checkCache struct {
	ringCh   <-chan struct{} // closed at the ring's next change
	ring     [sha256.Size]byte
	snap     *dns.Snapshot // the table's view whose names last passed
	expected [sha256.Size]byte
}

// ringHash is a hash of nd's encoded ring, computed again only after the
// allocator reports a change.
func (c *Cluster) ringHash(nd *Node) [sha256.Size]byte {
	c.cacheMu.Lock()
	cc := c.cache[nd]
	c.cacheMu.Unlock()
	if cc != nil && cc.ringCh != nil {
		select {
		case <-cc.ringCh:
		default:
			return cc.ring
		}
	}
	ch := nd.IPAM.Updated() // before reading: a change after it closes ch
	h := sha256.Sum256(nd.IPAM.RingMessage())
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if c.cache[nd] == nil {
		c.cache[nd] = &checkCache{}
	}
	c.cache[nd].ringCh, c.cache[nd].ring = ch, h
	return h
}

// namesPassed reports whether nd's names passed with this very view of
// its table and these expected names.
func (c *Cluster) namesPassed(nd *Node, snap *dns.Snapshot, expect [sha256.Size]byte) bool {
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	cc := c.cache[nd]
	return cc != nil && cc.snap == snap && cc.expected == expect
}

func (c *Cluster) noteNamesPassed(nd *Node, snap *dns.Snapshot, expect [sha256.Size]byte) {
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if c.cache[nd] == nil {
		c.cache[nd] = &checkCache{}
	}
	c.cache[nd].snap, c.cache[nd].expected = snap, expect
}

// WaitConverged polls Check until it passes and returns how long that took
// from start, or the last disagreement after timeout.
func (c *Cluster) WaitConverged(start time.Time, timeout time.Duration) (time.Duration, error) {
	return c.WaitFor(c.Check, start, timeout)
}

// WaitFor polls check until it passes, as WaitConverged does. It waits
// 100 ms between checks, or as long as the last check took if longer: a
// check reads every peer's reachable set (O(N²) at N peers), and the
// peers it checks share the process's cores with it.
func (c *Cluster) WaitFor(check func() error, start time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := start.Add(timeout)
	for {
		t0 := time.Now()
		err := check()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("not converged after %v: %w", timeout, err)
		}
		time.Sleep(max(100*time.Millisecond, time.Since(t0)))
	}
}

// ringDiff names the first entry where two encoded rings differ.
func ringDiff(a, b []byte) string {
	ma, errA := ipam.ParseMessage(a)
	mb, errB := ipam.ParseMessage(b)
	if errA != nil || errB != nil || ma.Ring == nil || mb.Ring == nil {
		return ""
	}
	ea, eb := ma.Ring.Entries, mb.Ring.Entries
	for i := 0; i < len(ea) || i < len(eb); i++ {
		switch {
		case i >= len(ea):
			return fmt.Sprintf(" (first: only the second has token %d)", eb[i].Token)
		case i >= len(eb):
			return fmt.Sprintf(" (first: only the first has token %d)", ea[i].Token)
		case ea[i] != eb[i]:
			return fmt.Sprintf(" (first at token %d/%d: %s v%d by %s against %s v%d by %s)", ea[i].Token, eb[i].Token,
				ea[i].Owner.Name(), ea[i].Version, ea[i].Writer.Name(), eb[i].Owner.Name(), eb[i].Version, eb[i].Writer.Name())
		}
	}
	if len(ma.Ring.Votes) != len(mb.Ring.Votes) || len(ma.Ring.Transfers) != len(mb.Ring.Transfers) {
		return " (votes or transfers)"
	}
	return ""
}

// RouterCounters is Counters of the routers alone (discovery), which never
// waits on an allocator busy with a ring.
func (c *Cluster) RouterCounters() map[string]uint64 { return c.sumCounters(false) }

// Counters sums the counters of every node's router (discovery),
// allocator (ipam) and name server (dns), gone ones included (so totals never go down): where a
// run's messages were dropped or refused. Each router's frames by message
// type (Router.FramesSent) are in it too, as frames_sent_TYPE.
func (c *Cluster) Counters() map[string]uint64 { return c.sumCounters(true) }

// RouterCounter sums the named counters of every node's router, gone
// ones included, without copying every counter of every router
// (RouterCounters), for loops that poll a few of them.
func (c *Cluster) RouterCounter(names ...string) uint64 {
	c.mu.Lock()
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()
	var sum uint64
	for _, nd := range nodes {
		if nd == nil {
			continue
		}
		for _, n := range names {
			sum += nd.Router.Counter(n)
		}
	}
	return sum
}

func (c *Cluster) sumCounters(withIPAM bool) map[string]uint64 {
	out := map[string]uint64{}
	c.mu.Lock()
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()
	for _, nd := range nodes {
		if nd == nil {
			continue
		}
		for k, v := range nd.Router.Counters() {
			out[k] += v
		}
		for k, v := range nd.Router.FramesSent() {
			out["frames_sent_"+k] += v
		}
		if withIPAM && nd.IPAM != nil {
			for k, v := range nd.IPAM.Counters() {
				out[k] += v
			}
		}
		if withIPAM && nd.DNS != nil {
			for k, v := range nd.DNS.Counters() {
				out[k] += v
			}
		}
	}
	return out
}

// ipamWhy says where a peer without an address stands in IPAM: its ring,
// its space, the donor it waits for, and its request and refusal counters.
func ipamWhy(m *Node, all []*Node) string {
	st := m.IPAM.Status()
	spans, entries := 0, 0
	for _, p := range st.Peers {
		entries += len(p.Prefixes)
		if p.Peer == m.Key {
			spans = len(p.Prefixes)
		}
	}
	donor := "none"
	if !st.Donor.IsZero() {
		donor = st.Donor.Name()
		for _, nd := range all {
			if nd.Key != st.Donor {
				continue
			}
			direct := false
			for _, p := range m.Router.Reachable() {
				if p.Key == nd.Key {
					direct = p.Direct
				}
			}
			dc := nd.IPAM.Counters()
			donor = fmt.Sprintf("%s (a neighbour: %v; it received %d requests, granted %d, declined %d, resent %d)", nd.Name, direct,
				dc["ipam_request_received"], dc["ipam_grant"], dc["ipam_request_declined"], dc["ipam_request_grant_resent"])
		}
	}
	var cs []string
	for _, k := range []string{"ipam_request_sent", "ipam_donor_ring_trusted", "ipam_entry_unauthorized", "ipam_grant_not_from_granter", "ipam_held_taken", "ipam_authority_asked", "ipam_ring_received"} {
		cs = append(cs, fmt.Sprintf("%s %d", strings.TrimPrefix(k, "ipam_"), st.Counters[k]))
	}
	reachOwners := 0
	for _, p := range st.Peers {
		if p.Reachable && p.Peer != m.Key {
			reachOwners++
		}
	}
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%.0f s ago", time.Since(t).Seconds())
	}
	return fmt.Sprintf("seeded %v, %d owners' prefixes, owns %d, waiting %v for %s (asked %s, %d silent); reaches %d peers, %d of them owners; ticked %s, its loop: %s; %s",
		st.Seed.ID != 0, entries, spans, st.WaitingForSpace, donor, ago(st.Asked), st.Silent, st.Reachable, reachOwners, ago(st.Ticked), m.LoopStep(), strings.Join(cs, ", "))
}
