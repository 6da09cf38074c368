package ipam

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Transport carries IPAM messages; the daemon implements it over the gossip
// layer's ipam channel. Neither method may call back into the Allocator
// synchronously (the Allocator calls them without holding its lock, but a
// re-entrant HandleMessage from inside Broadcast would still interleave).
type Transport interface {
	// Broadcast delivers msg to every peer of the network, multi-hop, best
	// effort. Ring messages go this way.
	Broadcast(msg []byte)
	// Send delivers msg to one peer, best effort (an error is only logged;
	// the request is retried after RequestTimeout).
	Send(to key.Public, msg []byte) error
}

// Config configures an Allocator.
type Config struct {
	Self key.Public
	// Private is Self's private key: this peer signs its ring entries,
	// votes and transfers with it (sign.go).
	Private key.Private
	Range   netip.Prefix // the overlay range, e.g. 10.32.0.0/12
	// Path is the bbolt file holding the ring and own allocations. Empty
	// keeps the state in memory (tests, tools).
	Path string
	// NoSync skips fsync on commits. Survives kill -9 (the data is in the
	// page cache) but not a power loss. For tests and benchmarks.
	NoSync    bool
	Transport Transport
	// Reserved addresses are never handed out (e.g. hosts' overlay
	// addresses). The range's network and broadcast addresses always are.
	Reserved []netip.Addr
	// RequestTimeout is how long to wait for a donor before asking another
	// (default 2s).
	RequestTimeout time.Duration
	Now            func() time.Time // default time.Now
	Logger         *slog.Logger     // nil: silent
	Rand           func() uint64    // seed IDs; default crypto/rand
	// Verify checks one signature of a ring item; key.Verify when nil.
	// Each allocator remembers what it verified (sign.go); the simulator
	// (package sim) passes one cache shared by all its peers, since in one
	// process N peers each checking the same N signed entries is N^2
	// checks of identical bytes. A daemon leaves it nil: it verifies
	// everything itself.
	Verify func(p key.Public, domain string, msg []byte, sig *key.Signature) error
	store  store // tests: overrides Path
}

// Allocation is one address handed out by this peer.
type Allocation struct {
	Addr netip.Addr
	ID   string
}

// Errors of the allocator.
var (
	// ErrWaitingForSpace: this peer owns no free address; it has asked a
	// donor and Updated() fires when the ring changes. Retry then.
	ErrWaitingForSpace = errors.New("ipam: no free address here yet; space requested from another peer")
	ErrAddressTaken    = errors.New("ipam: address already allocated")
	ErrNotInRange      = errors.New("ipam: address outside the overlay range")
	ErrReserved        = errors.New("ipam: address is reserved")
	ErrNotAllocated    = errors.New("ipam: address not allocated here")
	ErrClosed          = errors.New("ipam: allocator closed")
)

// OwnedElsewhereError is returned by Claim for an address owned by another
// peer. It matches ErrNotOwner.
type OwnedElsewhereError struct {
	Addr  netip.Addr
	Owner key.Public
}

func (e *OwnedElsewhereError) Error() string {
	return fmt.Sprintf("ipam: %v belongs to the range of peer %s; claim it there", e.Addr, e.Owner.Name())
}

func (e *OwnedElsewhereError) Unwrap() error { return ErrNotOwner }

// Allocator is one peer's IPAM: its copy of the ring and its allocations.
// All methods are safe for concurrent use.
type Allocator struct {
	// Constant after Open.
	self       key.Public
	priv       key.Private
	span       Span
	tr         Transport
	now        func() time.Time
	log        *slog.Logger
	rand       func() uint64
	reqTimeout time.Duration

	mu       sync.Mutex // guards everything below
	closed   bool
	ring     *Ring
	st       store
	allocs   map[netip.Addr]string
	byID     map[string][]netip.Addr
	reserved map[uint32]bool
	// reservedSorted is reserved's keys, sorted (usedIn).
	reservedSorted []uint32
	reachable      map[key.Public]bool
	// neighbours are the reachable peers we have a control connection
	// to (SetNeighbours): preferred donors.
	neighbours map[key.Public]bool
	// neighbourList is neighbours in a slice (quick rounds pick from it),
	// quick the quick digest rounds still due after the ring's last
	// change and quickNext the index of the next one's peer (digest.go).
	neighbourList []key.Public
	quick         int
	quickNext     int
	cursor        uint32
	wantSpace     bool
	reqDonor      key.Public
	reqAt         time.Time
	ticked        time.Time // when Tick last ran (Status)
	// silent holds the donors asked for the current want that granted
	// nothing within RequestTimeout (cut off by a partition not noticed
	// yet, or no space to give): the next request goes to another one.
	silent    map[key.Public]bool
	subnetReq map[Span]subnetRequest // pending requests for space in a subnet (subnet.go)
	conflicts []Allocation
	lastErr   error
	counters  map[string]uint64
	verify    verifier
	held      map[uint32]heldEntry    // entry states refused for authority, retried (authority.go)
	askAuth   map[key.Public]askState // owners to ask for the spans of refused states (authority.go)
	lastAsk   map[key.Public]time.Time
	// relayNews marks the entries a relay part taught us, relayVotes
	// whether it brought votes or transfers: ringChangedLocked broadcasts
	// them with our own changes (parts.go). votesBefore and
	// transfersBefore are the votes and transfers as last broadcast or
	// merged: a change of ours among them goes out whole.
	relayNews       []bool
	merging         bool // ringChangedLocked runs for a merge (handleRingLocked)
	relayVotes      bool
	votesBefore     []Vote
	transfersBefore []Transfer
	// digest is the ring's digest, until the ring changes (digest.go).
	digest *ringDigest
	// freeStale: our allocations, the reserved addresses or the ring
	// changed since Tick last published our free counts.
	freeStale bool
	// dirty: the ring changed by merges since it was last saved (at
	// savedAt).
	dirty   bool
	savedAt time.Time
	// asm is the ring being put together from parts while ours is
	// unseeded, and asmCover the spans its parts described (parts.go).
	asm      *Ring
	asmCover []Span
	// asmEnds is what followed each of asm's tokens in its parts
	// (dropUnbounded).
	asmEnds map[uint32]asmEnd
	// lastReply is when each peer was last sent our ring in answer to
	// one it sent that we refused part of (bounds a ping-pong between two
	// peers that each refuse something of the other's).
	lastReply map[key.Public]time.Time
	// left holds the rings of networks this peer gave way from, by seed
	// (giveway.go), in case it comes back to one.
	left map[Seed]*Ring
	// versionWarned: peers already logged as speaking another wire version.
	versionWarned map[key.Public]bool
	// digestAt is when each peer's last digest was answered: a request
	// just after one is answered with the grant alone (grant.go).
	digestAt map[key.Public]time.Time
	// reclaimRefused is the last peer Reclaim could not remove (logged
	// once, not at every call).
	reclaimRefused key.Public
	// askedRingAt is when this peer, with no ring, last asked a new
	// neighbour for one (NewNeighbour).
	askedRingAt time.Time
	// assembledAt is when a part last went into the ring being put
	// together (assembleLocked).
	assembledAt time.Time
	// pendingClaims are allocations made by ClaimAfterRestart while the
	// ring was unknown, held in allocs but not yet in the store.
	pendingClaims map[netip.Addr]bool
	updated       chan struct{}
}

// Open loads (or creates) the state at cfg.Path and returns the allocator.
// A restarted peer gets back its ring, its ranges and its allocations.
func Open(cfg Config) (*Allocator, error) {
	if cfg.Self.IsZero() {
		return nil, errors.New("ipam: Config.Self unset")
	}
	if cfg.Private.Public() != cfg.Self {
		return nil, errors.New("ipam: Config.Private is not the key of Config.Self")
	}
	ring, err := NewRing(cfg.Range)
	if err != nil {
		return nil, err
	}
	a := &Allocator{
		self: cfg.Self, priv: cfg.Private, span: ring.span(), lastReply: map[key.Public]time.Time{}, lastAsk: map[key.Public]time.Time{}, left: map[Seed]*Ring{}, versionWarned: map[key.Public]bool{}, digestAt: map[key.Public]time.Time{}, tr: cfg.Transport, now: cfg.Now, log: cfg.Logger,
		rand: cfg.Rand, reqTimeout: cfg.RequestTimeout, ring: ring, st: cfg.store,
		allocs: map[netip.Addr]string{}, byID: map[string][]netip.Addr{},
		reachable: map[key.Public]bool{}, counters: map[string]uint64{}, updated: make(chan struct{}),
		pendingClaims: map[netip.Addr]bool{}, freeStale: true,
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.rand == nil {
		a.rand = func() uint64 {
			var b [8]byte
			rand.Read(b[:])
			return binary.BigEndian.Uint64(b[:])
		}
	}
	if a.reqTimeout == 0 {
		a.reqTimeout = 2 * time.Second
	}
	if a.tr == nil {
		a.tr = nopTransport{}
	}
	a.verify.verify = cfg.Verify
	if a.verify.verify == nil {
		a.verify.verify = key.Verify
	}
	a.setReservedLocked(cfg.Reserved)
	if a.st == nil {
		if cfg.Path == "" {
			a.st = newMemStore()
		} else {
			st, aside, err := openOrSetAside(cfg.Path, cfg.NoSync, a.now())
			if err != nil {
				return nil, err
			}
			a.st = st
			if aside != "" {
				a.count("ipam_state_set_aside")
				a.log.Error("the address state file failed its check and was set aside; starting with no ring: it comes back from the peers by gossip, and running containers keep their addresses",
					"moved_to", aside)
			}
		}
	}
	meta, rb, allocs, err := a.st.load()
	if err != nil {
		a.st.close()
		return nil, fmt.Errorf("ipam: loading state: %w", err)
	}
	switch {
	case meta.Self.IsZero():
		if err := a.st.saveMeta(storedMeta{cfg.Self, ring.Range}); err != nil {
			a.st.close()
			return nil, err
		}
	case meta.Self != cfg.Self:
		a.st.close()
		return nil, fmt.Errorf("ipam: state belongs to peer %s, not %s", meta.Self.Name(), cfg.Self.Name())
	case meta.Range != ring.Range:
		a.st.close()
		return nil, fmt.Errorf("ipam: state is for range %v, not %v", meta.Range, ring.Range)
	}
	converted := false
	if rb != nil {
		r, conv, err := parseStoredRing(rb, a.self)
		converted = conv
		if err != nil {
			a.st.close()
			return nil, fmt.Errorf("ipam: stored ring: %w", err)
		}
		if r.Range != ring.Range {
			a.st.close()
			return nil, fmt.Errorf("ipam: stored ring is for range %v, not %v", r.Range, ring.Range)
		}
		r.conclude(a.self) // conclusions are local, not stored
		a.ring = r
	}
	a.loadLeftLocked()
	for addr, id := range allocs {
		a.allocs[addr] = id
		a.byID[id] = append(a.byID[id], addr)
	}
	a.dropLostLocked()
	if converted {
		a.count("ipam_ring_converted")
		a.log.Warn("converted the address ring stored by version 2 (unsigned): this peer's entries are signed now; pending rmpeers were dropped, run them again once every peer is upgraded")
		if _, err := a.ringChangedLocked(); err != nil {
			a.st.close()
			return nil, err
		}
	}
	return a, nil
}

type nopTransport struct{}

func (nopTransport) Broadcast([]byte)              {}
func (nopTransport) Send(key.Public, []byte) error { return nil }

// Close releases the store. Further calls fail with ErrClosed.
func (a *Allocator) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	if a.dirty {
		if err := a.saveRingLocked(); err != nil {
			a.log.Error("saving the ring", "err", err)
		}
	}
	return a.st.close()
}

// outbox collects messages to send after the lock is released: ring
// parts to everyone, ring parts in answer to one peer, and one request.
type outbox struct {
	broadcast [][]byte
	replyTo   key.Public
	reply     [][]byte
	to        key.Public
	pre       []byte // to to, just before send: a request's digest (grant.go)
	send      []byte
	asks      []addressed // to the owners of spans we refused states in
}

// request takes r's request (to, pre, send) into o.
func (o *outbox) request(r outbox) { o.to, o.pre, o.send = r.to, r.pre, r.send }

type addressed struct {
	to  key.Public
	msg []byte
}

func (a *Allocator) flush(o outbox) {
	a.countSent(o)
	// The answer first: a grant's requester waits on it (the broadcast
	// reaches it too, after up to N-1 others).
	for _, m := range o.reply {
		if err := a.tr.Send(o.replyTo, m); err != nil {
			a.log.Debug("answering a peer's ring", "peer", o.replyTo.Name(), "err", err)
			break
		}
	}
	for _, m := range o.broadcast {
		a.tr.Broadcast(m)
	}
	for _, m := range o.asks {
		if err := a.tr.Send(m.to, m.msg); err != nil {
			a.log.Debug("asking an owner for its span", "peer", m.to.Name(), "err", err)
		}
	}
	if o.pre != nil {
		if err := a.tr.Send(o.to, o.pre); err != nil {
			a.log.Debug("sending to a peer", "peer", o.to.Name(), "err", err)
		}
	}
	if o.send != nil {
		if err := a.tr.Send(o.to, o.send); err != nil {
			a.log.Warn("sending to a peer", "peer", o.to.Name(), "err", err)
		}
	}
}

func (a *Allocator) count(name string) { a.counters[name]++ }

// countSent counts the messages and bytes o sends (ipam_sent_messages,
// ipam_sent_bytes), a broadcast once per peer reachable: what a change or
// a round costs the mesh (sim/cmd/simbench prints them per change).
func (a *Allocator) countSent(o outbox) {
	var n, bytes uint64
	for _, m := range o.reply {
		n, bytes = n+1, bytes+uint64(len(m))
	}
	for _, m := range o.asks {
		n, bytes = n+1, bytes+uint64(len(m.msg))
	}
	for _, m := range [][]byte{o.pre, o.send} {
		if m != nil {
			n, bytes = n+1, bytes+uint64(len(m))
		}
	}
	a.mu.Lock()
	for _, m := range o.broadcast {
		k := uint64(len(a.reachable))
		n, bytes = n+k, bytes+k*uint64(len(m))
	}
	if n > 0 {
		a.counters["ipam_sent_messages"] += n
		a.counters["ipam_sent_bytes"] += bytes
	}
	a.mu.Unlock()
}

// Seed creates a new network: this peer owns the whole range at once. Call
// it from `launch` with no peer to join; it fails if the ring is seeded.
func (a *Allocator) Seed() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if err := a.ring.SeedTo(a.self, a.rand()); err != nil {
		a.mu.Unlock()
		return err
	}
	o, err := a.ringChangedLocked()
	a.mu.Unlock()
	a.flush(o)
	return err
}

// ringChangedLocked persists the ring, publishes free counts, drops
// allocations we no longer own, wakes waiters and returns the broadcast.
func (a *Allocator) ringChangedLocked() (outbox, error) {
	// Transfers first: one that completes here makes inherited entries
	// ours, and their free counts are published in the same broadcast
	// rather than at the next Tick (donor choice reads them).
	a.digest = nil // (and again at the end: what follows changes the ring too)
	var reachable []key.Public
	if a.ring.needsReachable(a.self) {
		reachable = a.reachableList() // only pending transfers read it: O(N) per change otherwise
	}
	a.ring.StepTransfers(a.self, reachable)
	a.recordPendingClaimsLocked()
	a.freeStale = true
	// After a merge the free counts of our own entries wait for the next
	// Tick: a grantee that published at once, on the grant its donor
	// answered it with, overtook the donor's broadcast of that grant at
	// most peers, which then refused the free count for lack of authority.
	// Inherited entries are published at once, merge or not: until then
	// they count zero for us (FreeOf), so our status and every donor
	// choice would miss the space we just took over (TestIPAMRmpeer: the
	// winner filled by the count it showed left the dead peer's addresses
	// unused). Receivers take them: the Done claim goes in the same
	// broadcast, and its transfers are merged before its entries.
	a.publishFreeLocked(a.merging)
	a.dropLostLocked()
	// What this peer changed itself (a grant, a free count, a vote) is
	// saved before it goes out, so a restart never contradicts what others
	// heard; what it merged from others is saved by Tick at most every
	// mergedSaveInterval (a crash loses at most that much of others'
	// state, and gossip brings it back): encoding the whole ring every
	// second while merges came was 3 % of the simulated N=300 mesh's CPU,
	// and a daemon's bbolt write of the ring each second of churn.
	ownVotes := !slices.Equal(a.ring.Votes, a.votesBefore) || !slices.EqualFunc(a.ring.Transfers, a.transfersBefore, sameTransferState)
	if a.ring.signPending(a.self, a.priv) > 0 {
		if err := a.saveRingLocked(); err != nil {
			return outbox{}, err
		}
	} else {
		a.dirty = true
	}
	// Everyone hears what changed: the entries we signed just now, and
	// what a relay part taught us (relayNews, set by handleRingLocked).
	// The entries go by index (ringPartsSel): a change of ours is not a
	// pass over the ring.
	sel := append([]int{}, a.ring.signed...)
	if marks := a.relayNews; len(marks) == len(a.ring.Entries) {
		for _, i := range a.ring.signed {
			marks[i] = true
		}
		sel = sel[:0]
		for i, m := range marks {
			if m {
				sel = append(sel, i)
			}
		}
	}
	anyEntry := len(sel) > 0
	var vt *Ring
	switch {
	case a.relayVotes:
		vt = a.ring // a relay part's news: ours all, as the other side may lack any
	case ownVotes:
		vt = changedVotes(a.ring, a.votesBefore, a.transfersBefore)
	}
	a.relayNews, a.relayVotes = nil, false
	var o outbox
	if anyEntry || vt != nil {
		msgs, err := ringPartsSel(a.ring, sel, vt, false)
		if err != nil {
			return outbox{}, err
		}
		o.broadcast = msgs
	}
	a.votesBefore, a.transfersBefore = slices.Clone(a.ring.Votes), cloneTransfers(a.ring.Transfers)
	a.digest = nil
	a.quickRoundsLocked()
	close(a.updated)
	a.updated = make(chan struct{})
	return o, nil
}

// saveRingLocked writes the ring to the state file.
func (a *Allocator) saveRingLocked() error {
	body, err := AppendRing(nil, a.ring)
	if err != nil {
		return err
	}
	if err := a.st.saveRing(body); err != nil {
		return fmt.Errorf("ipam: saving ring: %w", err)
	}
	a.dirty, a.savedAt = false, a.now()
	return nil
}

// Updated returns a channel closed at the next change of the ring.
func (a *Allocator) Updated() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.updated
}

func (a *Allocator) reachableList() []key.Public {
	out := make([]key.Public, 0, len(a.reachable))
	for p := range a.reachable {
		out = append(out, p)
	}
	return out
}
