package ipam

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
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
	Self  key.Public
	Range netip.Prefix // the overlay range, e.g. 10.32.0.0/12
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
	Now            func() time.Time     // default time.Now
	Logf           func(string, ...any) // nil: silent
	Rand           func() uint64        // seed IDs; default crypto/rand
	store          store                // tests: overrides Path
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
	span       Span
	tr         Transport
	now        func() time.Time
	logf       func(string, ...any)
	rand       func() uint64
	reqTimeout time.Duration

	mu        sync.Mutex // guards everything below
	closed    bool
	ring      *Ring
	st        store
	allocs    map[netip.Addr]string
	byID      map[string][]netip.Addr
	reserved  map[uint32]bool
	reachable map[key.Public]bool
	cursor    uint32
	wantSpace bool
	reqDonor  key.Public
	reqAt     time.Time
	// silent holds the donors asked for the current want that granted
	// nothing within RequestTimeout (cut off by a partition not noticed
	// yet, or no space to give): the next request goes to another one.
	silent    map[key.Public]bool
	conflicts []Allocation
	lastErr   error
	counters  map[string]uint64
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
	ring, err := NewRing(cfg.Range)
	if err != nil {
		return nil, err
	}
	a := &Allocator{
		self: cfg.Self, span: ring.span(), tr: cfg.Transport, now: cfg.Now, logf: cfg.Logf,
		rand: cfg.Rand, reqTimeout: cfg.RequestTimeout, ring: ring, st: cfg.store,
		allocs: map[netip.Addr]string{}, byID: map[string][]netip.Addr{},
		reachable: map[key.Public]bool{}, counters: map[string]uint64{}, updated: make(chan struct{}),
		pendingClaims: map[netip.Addr]bool{},
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.logf == nil {
		a.logf = func(string, ...any) {}
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
				a.logf("ipam: the state file failed its check and was moved to %s; starting with no ring: it comes back from the peers by gossip, and running containers keep their addresses", aside)
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
	if rb != nil {
		r, err := ParseRing(rb)
		if err != nil {
			a.st.close()
			return nil, fmt.Errorf("ipam: stored ring: %w", err)
		}
		if r.Range != ring.Range {
			a.st.close()
			return nil, fmt.Errorf("ipam: stored ring is for range %v, not %v", r.Range, ring.Range)
		}
		a.ring = r
	}
	for addr, id := range allocs {
		a.allocs[addr] = id
		a.byID[id] = append(a.byID[id], addr)
	}
	a.dropLostLocked()
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
	return a.st.close()
}

// outbox collects messages to send after the lock is released.
type outbox struct {
	broadcast []byte
	to        key.Public
	send      []byte
}

func (a *Allocator) flush(o outbox) {
	if o.broadcast != nil {
		a.tr.Broadcast(o.broadcast)
	}
	if o.send != nil {
		if err := a.tr.Send(o.to, o.send); err != nil {
			a.logf("ipam: sending to %s: %v", o.to.Name(), err)
		}
	}
}

func (a *Allocator) count(name string) { a.counters[name]++ }

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
	a.ring.StepTransfers(a.self, a.reachableList())
	a.recordPendingClaimsLocked()
	a.publishFreeLocked()
	a.dropLostLocked()
	msg, err := AppendRingMessage(nil, a.ring)
	if err != nil {
		return outbox{}, err
	}
	if err := a.st.saveRing(msg[hdrLen:]); err != nil {
		return outbox{}, fmt.Errorf("ipam: saving ring: %w", err)
	}
	close(a.updated)
	a.updated = make(chan struct{})
	return outbox{broadcast: msg}, nil
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

// ownEntries returns the spans of the entries self effectively owns.
func (a *Allocator) ownEntries() (idx []int, spans []Span) {
	for i := range a.ring.Entries {
		if a.ring.heir(a.ring.Entries[i].Owner) == a.self {
			idx = append(idx, i)
			spans = append(spans, a.ring.entrySpan(i))
		}
	}
	return idx, spans
}

// usedIn counts allocated or reserved addresses in s.
func (a *Allocator) usedIn(s Span) uint64 {
	var n uint64
	for addr := range a.allocs {
		if s.Contains(a2u(addr)) {
			n++
		}
	}
	for r := range a.reserved {
		if s.Contains(r) {
			if _, ok := a.allocs[u2a(r)]; !ok {
				n++
			}
		}
	}
	return n
}

// publishFreeLocked updates the free counts of our entries.
func (a *Allocator) publishFreeLocked() bool {
	idx, spans := a.ownEntries()
	changed := false
	for k, i := range idx {
		free := spans[k].Size() - a.usedIn(spans[k])
		if a.ring.setFree(a.self, i, uint32(min(free, 1<<32-1))) {
			changed = true
		}
	}
	return changed
}

// dropLostLocked moves allocations outside our ranges (lost to a
// conflicting rmpeer, see the package doc) to the conflict list.
func (a *Allocator) dropLostLocked() {
	spans := a.ring.Spans(a.self)
	var lost []netip.Addr
	for addr, id := range a.allocs {
		u := a2u(addr)
		if !slices.ContainsFunc(spans, func(s Span) bool { return s.Contains(u) }) {
			lost = append(lost, addr)
			a.conflicts = append(a.conflicts, Allocation{addr, id})
			a.count("ipam_allocation_lost")
			a.logf("ipam: [unexpected] lost the range holding %v (%s)", addr, id)
		}
	}
	if len(lost) > 0 {
		a.st.delAllocs(lost)
		for _, addr := range lost {
			a.forgetLocked(addr)
		}
	}
}

func (a *Allocator) forgetLocked(addr netip.Addr) {
	id := a.allocs[addr]
	delete(a.allocs, addr)
	delete(a.pendingClaims, addr)
	l := slices.DeleteFunc(a.byID[id], func(x netip.Addr) bool { return x == addr })
	if len(l) == 0 {
		delete(a.byID, id)
	} else {
		a.byID[id] = l
	}
}

// SetReserved replaces the caller's reserved addresses.
func (a *Allocator) SetReserved(addrs []netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setReservedLocked(addrs)
}

func (a *Allocator) setReservedLocked(addrs []netip.Addr) {
	a.reserved = map[uint32]bool{a.span.First: true, a.span.Last: true}
	for _, r := range addrs {
		if r.Is4() && a.span.Contains(a2u(r)) {
			a.reserved[a2u(r)] = true
		}
	}
}

// Allocate returns an address for id from this peer's ranges. The same id
// gets the same address back (idempotent). With no free address here it
// asks a donor and returns ErrWaitingForSpace.
func (a *Allocator) Allocate(id string) (netip.Addr, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return netip.Addr{}, ErrClosed
	}
	if l := a.byID[id]; len(l) > 0 {
		a.mu.Unlock()
		return l[0], nil
	}
	addr, ok := a.findFreeLocked()
	if !ok {
		o := a.requestSpaceLocked(false)
		a.mu.Unlock()
		a.flush(o)
		return netip.Addr{}, ErrWaitingForSpace
	}
	if err := a.st.putAlloc(addr, id); err != nil {
		a.mu.Unlock()
		return netip.Addr{}, fmt.Errorf("ipam: saving allocation: %w", err)
	}
	a.allocs[addr] = id
	a.byID[id] = append(a.byID[id], addr)
	a.cursor = a2u(addr) + 1
	a.count("ipam_allocate")
	o := a.markUsedLocked()
	a.mu.Unlock()
	a.flush(o)
	return addr, nil
}

// markUsedLocked records that the network has been used, the first time,
// and returns the broadcast that tells the others.
func (a *Allocator) markUsedLocked() outbox {
	if a.ring.Used || !a.ring.Seeded() {
		return outbox{}
	}
	a.ring.Used = true
	o, err := a.ringChangedLocked()
	if err != nil {
		a.logf("ipam: %v", err)
	}
	return o
}

// findFreeLocked scans our spans from the cursor for a free address.
func (a *Allocator) findFreeLocked() (netip.Addr, bool) {
	spans := a.ring.Spans(a.self)
	var total uint64
	for _, s := range spans {
		total += s.Size() - a.usedIn(s)
	}
	if total == 0 {
		return netip.Addr{}, false
	}
	// Start in the span holding the cursor (or the first after it).
	start := 0
	for i, s := range spans {
		if s.Last >= a.cursor {
			start = i
			break
		}
	}
	for k := range len(spans) + 1 {
		s := spans[(start+k)%len(spans)]
		from := s.First
		if k == 0 && s.Contains(a.cursor) {
			from = a.cursor
		}
		for u := uint64(from); u <= uint64(s.Last); u++ {
			if a.reserved[uint32(u)] {
				continue
			}
			if _, used := a.allocs[u2a(uint32(u))]; !used {
				return u2a(uint32(u)), true
			}
		}
	}
	return netip.Addr{}, false
}

// Claim records addr for id. It fails if addr is reserved, outside the
// range, owned by another peer (naming it), or allocated to another id.
func (a *Allocator) Claim(addr netip.Addr, id string) error {
	a.mu.Lock()
	o, err := a.claimLocked(addr, id)
	a.mu.Unlock()
	a.flush(o)
	return err
}

func (a *Allocator) claimLocked(addr netip.Addr, id string) (outbox, error) {
	if a.closed {
		return outbox{}, ErrClosed
	}
	if !addr.Is4() || !a.span.Contains(a2u(addr)) {
		return outbox{}, fmt.Errorf("%w: %v not in %v", ErrNotInRange, addr, a.ring.Range)
	}
	if a.reserved[a2u(addr)] {
		return outbox{}, fmt.Errorf("%w: %v", ErrReserved, addr)
	}
	owner, ok := a.ring.Owner(addr)
	if !ok {
		return outbox{}, fmt.Errorf("%w: ring not known yet; retry when this peer has joined", ErrWaitingForSpace)
	}
	if owner != a.self {
		return outbox{}, &OwnedElsewhereError{addr, owner}
	}
	if cur, ok := a.allocs[addr]; ok {
		if cur == id {
			return outbox{}, nil
		}
		return outbox{}, fmt.Errorf("%w: %v is in use by %q", ErrAddressTaken, addr, cur)
	}
	if err := a.st.putAlloc(addr, id); err != nil {
		return outbox{}, fmt.Errorf("ipam: saving allocation: %w", err)
	}
	a.allocs[addr] = id
	a.byID[id] = append(a.byID[id], addr)
	a.count("ipam_claim")
	return a.markUsedLocked(), nil
}

// Free releases every address of id and returns how many.
func (a *Allocator) Free(id string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return 0, ErrClosed
	}
	l := slices.Clone(a.byID[id])
	if len(l) == 0 {
		return 0, nil
	}
	if err := a.st.delAllocs(l); err != nil {
		return 0, fmt.Errorf("ipam: saving release: %w", err)
	}
	for _, addr := range l {
		a.forgetLocked(addr)
	}
	return len(l), nil
}

// FreeAddr releases one address.
func (a *Allocator) FreeAddr(addr netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	if _, ok := a.allocs[addr]; !ok {
		return fmt.Errorf("%w: %v", ErrNotAllocated, addr)
	}
	if err := a.st.delAllocs([]netip.Addr{addr}); err != nil {
		return fmt.Errorf("ipam: saving release: %w", err)
	}
	a.forgetLocked(addr)
	return nil
}

// Allocations lists this peer's allocations by address.
func (a *Allocator) Allocations() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Allocation, 0, len(a.allocs))
	for addr, id := range a.allocs {
		out = append(out, Allocation{addr, id})
	}
	slices.SortFunc(out, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return out
}

// Conflicts returns (and clears) allocations this peer had to give up
// because it lost their range (see "Known hole" in the package doc). The
// daemon should log them and re-address those containers.
func (a *Allocator) Conflicts() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.conflicts
	a.conflicts = nil
	return c
}

// Prefixes returns the ranges peer p owns, as CIDRs (WireGuard AllowedIPs
// and routes). Prefixes(self) is this peer's own space.
func (a *Allocator) Prefixes(p key.Public) []netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return SpansToPrefixes(a.ring.Spans(p))
}

// AllPrefixes returns every owner's CIDRs.
func (a *Allocator) AllPrefixes() map[key.Public][]netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[key.Public][]netip.Prefix{}
	for p := range a.ring.Owners() {
		out[p] = SpansToPrefixes(a.ring.Spans(p))
	}
	return out
}

// SetPeers tells the allocator which peers are reachable now. The daemon
// calls it whenever the set changes.
func (a *Allocator) SetPeers(reachable []key.Public) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.reachable = make(map[key.Public]bool, len(reachable))
	for _, p := range reachable {
		if p != a.self {
			a.reachable[p] = true
		}
	}
	var o outbox
	if a.ring.StepTransfers(a.self, a.reachableList()) {
		var err error
		if o, err = a.ringChangedLocked(); err != nil {
			a.logf("ipam: %v", err)
		}
	}
	if a.wantSpace && !a.reachable[a.reqDonor] {
		r := a.requestSpaceLocked(true)
		o.to, o.send = r.to, r.send
	}
	a.mu.Unlock()
	a.flush(o)
}

// requestSpaceLocked asks the best donor for space, unless a request is
// pending and not timed out (or force).
func (a *Allocator) requestSpaceLocked(force bool) outbox {
	a.wantSpace = true
	if !a.ring.Seeded() {
		return outbox{}
	}
	now := a.now()
	if !force && !a.reqDonor.IsZero() && now.Sub(a.reqAt) < a.reqTimeout {
		return outbox{}
	}
	if !force && !a.reqDonor.IsZero() {
		if a.silent == nil {
			a.silent = map[key.Public]bool{}
		}
		a.silent[a.reqDonor] = true
	}
	donor, ok := a.pickDonorLocked()
	if !ok && len(a.silent) > 0 {
		// Every reachable donor was asked: start the round again.
		a.silent = nil
		donor, ok = a.pickDonorLocked()
	}
	if !ok {
		a.reqDonor = key.Public{}
		return outbox{}
	}
	a.reqDonor, a.reqAt = donor, now
	a.count("ipam_request_sent")
	return outbox{to: donor, send: AppendRequestMessage(nil, a.ring.Seed)}
}

// pickDonorLocked picks the reachable peer with the most published free
// space (ties: smallest key); if none published any, the largest owner.
// Donors that stayed silent for the current want are passed over.
func (a *Allocator) pickDonorLocked() (key.Public, bool) {
	var best key.Public
	var bestFree, bestSize uint64
	found := false
	owners := a.ring.Owners()
	for p, size := range owners {
		if p == a.self || !a.reachable[p] || a.silent[p] {
			continue
		}
		free := a.ring.FreeOf(p)
		better := !found || free > bestFree || (free == bestFree && size > bestSize) ||
			(free == bestFree && size == bestSize && p.Less(best))
		if better {
			best, bestFree, bestSize, found = p, free, size, true
		}
	}
	return best, found
}

// HandleMessage processes one message from peer from. A malformed message
// or one from another network returns an error (and is counted); it never
// panics.
func (a *Allocator) HandleMessage(from key.Public, msg []byte) error {
	m, err := ParseMessage(msg)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if err != nil {
		a.count("ipam_message_malformed")
		a.mu.Unlock()
		return err
	}
	var o outbox
	switch {
	case m.Ring != nil:
		o, err = a.handleRingLocked(from, m.Ring)
	case m.Request != nil:
		o, err = a.handleRequestLocked(from, *m.Request)
	}
	a.mu.Unlock()
	a.flush(o)
	return err
}

func (a *Allocator) handleRingLocked(from key.Public, in *Ring) (outbox, error) {
	a.count("ipam_ring_received")
	next := a.ring.Clone()
	changed, err := next.Merge(in)
	var mismatch *SeedMismatchError
	if errors.As(err, &mismatch) && a.abandonsFor(in) {
		// Our network was never used: take theirs instead of splitting
		// the mesh into two networks forever.
		a.logf("ipam: joining network %v; the network this peer created (%v) was never used and is dropped", in.Seed, a.ring.Seed)
		a.count("ipam_seed_abandoned")
		a.lastErr = nil
		next, _ = NewRing(a.ring.Range)
		changed, err = next.Merge(in)
	}
	if err != nil {
		a.count("ipam_ring_refused")
		if a.lastErr == nil || a.lastErr.Error() != err.Error() {
			a.logf("ipam: ring from %s refused: %v", from.Name(), err)
		}
		a.lastErr = err
		return outbox{}, err
	}
	var o outbox
	if changed {
		a.ring = next
		merged := a.ring.Clone()
		if o, err = a.ringChangedLocked(); err != nil {
			return outbox{}, err
		}
		// Rebroadcast only what we added ourselves (votes, free counts):
		// the gossip layer already floods what we merged.
		if a.ring.Equal(merged) {
			o.broadcast = nil
		}
	}
	// Tell the sender what it lacks (one round trip converges).
	if !a.ring.Equal(in) {
		msg, err := AppendRingMessage(nil, a.ring)
		if err == nil && o.broadcast == nil {
			o.to, o.send = from, msg
		}
	}
	if a.wantSpace {
		if len(a.ring.Spans(a.self)) > 0 {
			if _, ok := a.findFreeLocked(); ok {
				a.wantSpace, a.reqDonor, a.silent = false, key.Public{}, nil
			}
		}
		if a.wantSpace && a.reqDonor.IsZero() {
			r := a.requestSpaceLocked(false)
			if r.send != nil && o.send == nil {
				o.to, o.send = r.to, r.send
			}
		}
	}
	return o, nil
}

// untouchedLocked reports whether our ring is a seed nobody used: we created
// it, it still holds just our one entry, we handed out no address, and no
// rmpeer happened. Nothing depends on such a network.
func (a *Allocator) untouchedLocked() bool {
	r := a.ring
	return r.Seeded() && !r.Used && r.Seed.Peer == a.self && len(r.Entries) == 1 && r.Entries[0].Owner == a.self &&
		len(r.Transfers) == 0 && len(r.Votes) == 0 && len(a.allocs) == 0
}

// abandonsFor decides, when a ring of another network arrives, whether ours
// gives way. A used network never does. An untouched one gives way to a
// used one (Ring.Used, or more than one owner), and between two untouched
// networks to the smaller seed, so two fresh peers that connect agree
// without talking.
func (a *Allocator) abandonsFor(in *Ring) bool {
	if !a.untouchedLocked() {
		return false
	}
	theirsUntouched := !in.Used && len(in.Entries) == 1 && in.Entries[0].Owner == in.Seed.Peer && len(in.Transfers) == 0 && len(in.Votes) == 0
	if !theirsUntouched {
		return true
	}
	return seedLess(in.Seed, a.ring.Seed)
}

func seedLess(x, y Seed) bool {
	if x.Peer != y.Peer {
		return x.Peer.Less(y.Peer)
	}
	return x.ID < y.ID
}

func (a *Allocator) handleRequestLocked(from key.Public, s Seed) (outbox, error) {
	a.count("ipam_request_received")
	if s != a.ring.Seed {
		a.count("ipam_request_refused")
		return outbox{}, fmt.Errorf("ipam: space request from %s for network %v, ours is %v", from.Name(), s, a.ring.Seed)
	}
	if from == a.self {
		return outbox{}, nil
	}
	g, ok := a.pickGrantLocked()
	if !ok {
		a.count("ipam_request_declined")
		return outbox{}, nil
	}
	if err := a.ring.Grant(a.self, from, g); err != nil {
		a.count("ipam_request_declined")
		return outbox{}, nil
	}
	a.count("ipam_grant")
	a.logf("ipam: granted %v to %s", g, from.Name())
	a.ring.Used = true
	return a.ringChangedLocked()
}

// pickGrantLocked chooses what to give: the upper half of our largest
// aligned free block (a single address only if we keep one too).
func (a *Allocator) pickGrantLocked() (Span, bool) {
	_, spans := a.ownEntries()
	// Reserved addresses do not count as used: every peer refuses to hand
	// them out, so a block may contain them and stay aligned.
	used := make([]uint32, 0, len(a.allocs))
	for addr := range a.allocs {
		used = append(used, a2u(addr))
	}
	slices.Sort(used)
	used = slices.Compact(used)
	var best Span
	var bestSize, totalFree uint64
	for _, s := range spans {
		lo := uint64(s.First)
		i, _ := slices.BinarySearch(used, s.First)
		for ; lo <= uint64(s.Last); i++ {
			hi := uint64(s.Last) + 1
			if i < len(used) && uint64(used[i]) < hi {
				hi = uint64(used[i])
			}
			if hi > lo {
				run := Span{uint32(lo), uint32(hi - 1)}
				totalFree += run.Size()
				if b := run.largestBlock(); b.Size() > bestSize {
					best, bestSize = b, b.Size()
				}
			}
			lo = hi + 1
			if i >= len(used) {
				break
			}
		}
	}
	switch {
	case bestSize >= 2:
		half := uint32(bestSize / 2)
		return Span{best.First + half, best.Last}, true
	case bestSize == 1 && totalFree >= 2:
		return best, true
	}
	return Span{}, false
}

// Tick does the periodic work: publish free counts, step pending rmpeer
// transfers, retry a space request that timed out. Call it every second or so.
func (a *Allocator) Tick() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	var o outbox
	changed := a.publishFreeLocked()
	if a.ring.StepTransfers(a.self, a.reachableList()) {
		changed = true
	}
	if changed {
		var err error
		if o, err = a.ringChangedLocked(); err != nil {
			a.logf("ipam: %v", err)
		}
	}
	if a.wantSpace {
		if _, ok := a.findFreeLocked(); ok {
			a.wantSpace, a.reqDonor, a.silent = false, key.Public{}, nil
		} else {
			r := a.requestSpaceLocked(false)
			o.to, o.send = r.to, r.send
		}
	}
	a.mu.Unlock()
	a.flush(o)
}

// Gossip broadcasts the whole ring (anti-entropy; the daemon may call it
// periodically and when a peer connects).
func (a *Allocator) Gossip() {
	if msg := a.RingMessage(); msg != nil {
		a.tr.Broadcast(msg)
	}
}

// RingMessage returns the current ring message (nil before seeding).
func (a *Allocator) RingMessage() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ring.Seeded() {
		return nil
	}
	msg, _ := AppendRingMessage(nil, a.ring)
	return msg
}

// RemovePeer hands dead's space to this peer (rmpeer). It returns at once;
// the space is ours when every elector has voted for us (Status shows the
// transfer as pending until then). Running it on two peers at once is safe.
func (a *Allocator) RemovePeer(dead key.Public) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if err := a.ring.RemovePeer(a.self, dead); err != nil {
		a.mu.Unlock()
		return err
	}
	a.ring.Used = true
	o, err := a.ringChangedLocked()
	a.mu.Unlock()
	a.flush(o)
	return err
}

// Reclaim runs RemovePeer for every unreachable owner whose goneSince time
// is at least after ago (--reclaim-after). The caller passes when it last
// saw each peer; peers missing from goneSince are left alone.
func (a *Allocator) Reclaim(goneSince map[key.Public]time.Time, after time.Duration) []key.Public {
	if after <= 0 {
		return nil
	}
	a.mu.Lock()
	now := a.now()
	var todo []key.Public
	for p := range a.ring.Owners() {
		t, ok := goneSince[p]
		if p == a.self || a.reachable[p] || !ok || now.Sub(t) < after {
			continue
		}
		if len(a.ring.transfersOf(p)) > 0 {
			continue // already being handled
		}
		todo = append(todo, p)
	}
	a.mu.Unlock()
	slices.SortFunc(todo, func(x, y key.Public) int { return bytes.Compare(x[:], y[:]) })
	var done []key.Public
	for _, p := range todo {
		if err := a.RemovePeer(p); err == nil {
			a.logf("ipam: reclaiming the space of %s, gone since %v", p.Name(), goneSince[p])
			done = append(done, p)
		}
	}
	return done
}

// ErrStillAllocated is returned by Leave while this peer has allocations.
var ErrStillAllocated = errors.New("ipam: addresses are still allocated here; release them first")

// Leave hands every range of this peer to one reachable peer (the smallest
// key, so the choice needs no agreement) and broadcasts the ring: how a
// peer that leaves the network for good gives its space back (weavewg
// reset). It returns the heir. If the broadcast is lost, the space stays
// with this peer's name until `rmpeer` on any member.
func (a *Allocator) Leave() (key.Public, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return key.Public{}, ErrClosed
	}
	if len(a.allocs) > 0 {
		a.mu.Unlock()
		return key.Public{}, ErrStillAllocated
	}
	var heir key.Public
	for p := range a.reachable {
		if heir.IsZero() || p.Less(heir) {
			heir = p
		}
	}
	if heir.IsZero() {
		a.mu.Unlock()
		return key.Public{}, errors.New("ipam: no reachable peer to hand the address space to")
	}
	_, spans := a.ownEntries()
	for _, s := range spans {
		if err := a.ring.Grant(a.self, heir, s); err != nil {
			a.mu.Unlock()
			return key.Public{}, fmt.Errorf("ipam: handing %v to %s: %w", s, heir.Name(), err)
		}
	}
	a.count("ipam_left")
	o, err := a.ringChangedLocked()
	a.mu.Unlock()
	a.flush(o)
	return heir, err
}

// WantSpace asks a donor for a range now if this peer owns none, so that a
// peer that has just joined holds space before its first container comes.
// Until the ring arrives the request waits for it.
func (a *Allocator) WantSpace() {
	a.mu.Lock()
	if a.closed || len(a.ring.Spans(a.self)) > 0 {
		a.mu.Unlock()
		return
	}
	o := a.requestSpaceLocked(false)
	a.mu.Unlock()
	a.flush(o)
}
