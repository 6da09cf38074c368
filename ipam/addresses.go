package ipam

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Addresses: allocating, claiming and freeing this peer's addresses, the
// free counts it publishes, and the ranges each owner is routed.

// usedIn counts allocated or reserved addresses in s: our allocations,
// and the reserved addresses in s by binary search (every other host's
// address is reserved, so there are N of them).
func (a *Allocator) usedIn(s Span) uint64 {
	var n uint64
	for addr := range a.allocs {
		if s.Contains(a2u(addr)) {
			n++
		}
	}
	i, _ := slices.BinarySearch(a.reservedSorted, s.First)
	for ; i < len(a.reservedSorted) && a.reservedSorted[i] <= s.Last; i++ {
		if _, ok := a.allocs[u2a(a.reservedSorted[i])]; !ok {
			n++
		}
	}
	return n
}

// publishFreeLocked updates the free counts of our entries; with
// inheritedOnly, only of those we own through a completed rmpeer and have
// not written yet (their published count is still the dead peer's, and
// FreeOf counts them zero for us).
func (a *Allocator) publishFreeLocked(inheritedOnly bool) bool {
	idx, spans := a.ownEntries()
	changed := false
	for k, i := range idx {
		if inheritedOnly && a.ring.Entries[i].Owner == a.self {
			continue
		}
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
	spans := a.ownSpans()
	var lost []netip.Addr
	for addr, id := range a.allocs {
		u := a2u(addr)
		if !slices.ContainsFunc(spans, func(s Span) bool { return s.Contains(u) }) {
			lost = append(lost, addr)
			a.conflicts = append(a.conflicts, Allocation{addr, id})
			a.count("ipam_allocation_lost")
			a.log.Error("[unexpected] lost the range holding an allocated address", "addr", addr, "id", id)
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
	a.freeStale = true
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
	next := make([]uint32, 0, len(addrs)+2)
	next = append(next, a.span.First, a.span.Last)
	for _, r := range addrs {
		if r.Is4() && a.span.Contains(a2u(r)) {
			next = append(next, a2u(r))
		}
	}
	slices.Sort(next)
	next = slices.Compact(next)
	if a.reserved != nil && slices.Equal(next, a.reservedSorted) {
		return // the daemon passes every host's address on each reconcile
	}
	a.reservedSorted = next
	a.reserved = make(map[uint32]bool, len(next))
	for _, r := range next {
		a.reserved[r] = true
	}
	a.freeStale = true
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
	a.freeStale = true
	a.cursor = a2u(addr) + 1
	a.count("ipam_allocate")
	o := a.markUsedLocked(id)
	a.mu.Unlock()
	a.flush(o)
	return addr, nil
}

// markUsedLocked records that the network has been used, the first time,
// and returns the broadcast that tells the others. The host address
// (HostID) does not count.
func (a *Allocator) markUsedLocked(id string) outbox {
	if a.ring.Used || !a.ring.Seeded() || id == HostID {
		return outbox{}
	}
	a.ring.Used = true
	o, err := a.ringChangedLocked()
	if err != nil {
		a.log.Error("saving the ring", "err", err)
	}
	return o
}

// findFreeLocked scans our spans from the cursor for a free address.
func (a *Allocator) findFreeLocked() (netip.Addr, bool) {
	spans := a.ownSpans()
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
	a.freeStale = true
	a.count("ipam_claim")
	return a.markUsedLocked(id), nil
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

// AllPrefixes returns every owner's CIDRs. One pass over the ring (each
// owner's spans coalesced as Spans does), where Spans per owner was
// O(owners × entries) per call, and the daemon calls it on every
// reconcile.
func (a *Allocator) AllPrefixes() map[key.Public][]netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	spans := a.ring.allSpans()
	out := make(map[key.Public][]netip.Prefix, len(spans))
	for p, l := range spans {
		out[p] = SpansToPrefixes(l)
	}
	return out
}
