package ipam

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Subnets (Weave Net's net:CIDR): an allocation may be asked inside a
// subnet of the range. The ring is not split by subnet; an address comes
// from this peer's ranges clipped to the subnet, and a peer with no free
// address there asks the peer that owns most of the subnet for part of
// its space inside it (msgRequestIn), which grants the upper half of its
// largest aligned free block within the subnet, as for a plain request.

// subnetRequest is the pending request for space in one subnet.
type subnetRequest struct {
	donor key.Public
	at    time.Time
}

// clipSpans returns the parts of spans inside sub.
func clipSpans(spans []Span, sub Span) []Span {
	var out []Span
	for _, s := range spans {
		f, l := max(s.First, sub.First), min(s.Last, sub.Last)
		if f <= l {
			out = append(out, Span{f, l})
		}
	}
	return out
}

// prefixSpan is the span of the addresses of p.
func prefixSpan(p netip.Prefix) Span {
	f := a2u(p.Masked().Addr())
	return Span{f, f + uint32(uint64(1)<<(32-p.Bits())-1)}
}

// checkSubnet refuses a subnet that is not IPv4 inside the range.
func (a *Allocator) checkSubnet(sub netip.Prefix) (Span, error) {
	if !sub.IsValid() || !sub.Addr().Is4() {
		return Span{}, fmt.Errorf("%w: subnet %v", ErrNotInRange, sub)
	}
	s := prefixSpan(sub)
	if s.First < a.span.First || s.Last > a.span.Last {
		return Span{}, fmt.Errorf("%w: subnet %v not in %v", ErrNotInRange, sub, a.ring.Range)
	}
	return s, nil
}

// AllocateIn is Allocate inside subnet sub: the same id gets its address
// back; with no free address of this peer's in sub, it asks the peer that
// owns most of sub for space there and returns ErrWaitingForSpace. The
// network and broadcast addresses of sub are never handed out (a
// container's interface carries sub's prefix length).
func (a *Allocator) AllocateIn(id string, sub netip.Prefix) (netip.Addr, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return netip.Addr{}, ErrClosed
	}
	s, err := a.checkSubnet(sub)
	if err != nil {
		a.mu.Unlock()
		return netip.Addr{}, err
	}
	for _, addr := range a.byID[id] {
		if s.Contains(a2u(addr)) {
			a.mu.Unlock()
			return addr, nil
		}
	}
	addr, ok := a.findFreeInLocked(s)
	if !ok {
		o := a.requestSpaceInLocked(sub, s)
		a.mu.Unlock()
		a.flush(o)
		return netip.Addr{}, ErrWaitingForSpace
	}
	if err := a.st.putAlloc(addr, id); err != nil {
		a.mu.Unlock()
		return netip.Addr{}, fmt.Errorf("ipam: saving allocation: %w", err)
	}
	a.allocs[addr] = id
	a.freeStale = true
	a.byID[id] = append(a.byID[id], addr)
	a.count("ipam_allocate")
	o := a.markUsedLocked(id)
	a.mu.Unlock()
	a.flush(o)
	return addr, nil
}

// findFreeInLocked returns the lowest free address of ours in s, not its
// first or last (the subnet's network and broadcast addresses).
func (a *Allocator) findFreeInLocked(s Span) (netip.Addr, bool) {
	for _, c := range clipSpans(a.ownSpans(), s) {
		for u := uint64(c.First); u <= uint64(c.Last); u++ {
			if uint32(u) == s.First || uint32(u) == s.Last || a.reserved[uint32(u)] {
				continue
			}
			if _, used := a.allocs[u2a(uint32(u))]; !used {
				return u2a(uint32(u)), true
			}
		}
	}
	return netip.Addr{}, false
}

// requestSpaceInLocked asks the reachable peer owning most of s (passing
// over the one asked last if it granted nothing within RequestTimeout).
func (a *Allocator) requestSpaceInLocked(sub netip.Prefix, s Span) outbox {
	if !a.ring.Seeded() {
		return outbox{}
	}
	now := a.now()
	if a.subnetReq == nil {
		a.subnetReq = map[Span]subnetRequest{}
	}
	last, pending := a.subnetReq[s]
	if pending && now.Sub(last.at) < a.reqTimeout {
		return outbox{}
	}
	var best key.Public
	var bestSize uint64
	for p := range a.ring.Owners() {
		if p == a.self || !a.reachable[p] {
			continue
		}
		var n uint64
		for _, c := range clipSpans(a.ring.Spans(p), s) {
			n += c.Size()
		}
		if pending && p == last.donor {
			n /= 2 // silent last time: prefer another if there is one
		}
		if n > bestSize || (n == bestSize && n > 0 && p.Less(best)) {
			best, bestSize = p, n
		}
	}
	if bestSize == 0 {
		delete(a.subnetReq, s)
		return outbox{}
	}
	a.subnetReq[s] = subnetRequest{donor: best, at: now}
	a.count("ipam_request_sent")
	return outbox{to: best, send: AppendRequestInMessage(nil, a.ring.Seed, sub)}
}

// handleRequestInLocked is the donor's side of msgRequestIn.
func (a *Allocator) handleRequestInLocked(from key.Public, r RequestIn) (outbox, error) {
	a.count("ipam_request_received")
	if r.Seed != a.ring.Seed {
		a.count("ipam_request_refused")
		return outbox{}, fmt.Errorf("%w: from %s for network %v, ours is %v", ErrOtherNetwork, from.Name(), r.Seed, a.ring.Seed)
	}
	if from == a.self {
		return outbox{}, nil
	}
	s, err := a.checkSubnet(r.Subnet)
	if err != nil {
		a.count("ipam_request_refused")
		return outbox{}, err
	}
	g, ok := a.pickGrantWithinLocked(s)
	if !ok {
		a.count("ipam_request_declined")
		return outbox{}, nil
	}
	if err := a.ring.Grant(a.self, from, g); err != nil {
		a.count("ipam_request_declined")
		return outbox{}, nil
	}
	a.count("ipam_grant")
	a.log.Info("granted address space in a subnet", "span", g.String(), "subnet", r.Subnet.String(), "peer", from.Name())
	return a.ringChangedLocked()
}

// RequestIn is a decoded msgRequestIn.
type RequestIn struct {
	Seed   Seed
	Subnet netip.Prefix
}

// AppendRequestInMessage appends a request for space inside sub.
func AppendRequestInMessage(b []byte, s Seed, sub netip.Prefix) []byte {
	b = append(b, WireVersion, msgRequestIn)
	b = append(b, s.Peer[:]...)
	b = binary.BigEndian.AppendUint64(b, s.ID)
	a4 := sub.Masked().Addr().As4()
	return append(append(b, a4[:]...), byte(sub.Bits()))
}

// parseRequestIn decodes a msgRequestIn body.
func parseRequestIn(body []byte) (RequestIn, error) {
	if len(body) != requestInLen {
		return RequestIn{}, fmt.Errorf("%w: subnet request of %d bytes", ErrMalformed, len(body))
	}
	r := RequestIn{Seed: Seed{Peer: key.Public(body[:key.Len]), ID: binary.BigEndian.Uint64(body[key.Len:])}}
	addr := netip.AddrFrom4([4]byte(body[requestLen : requestLen+4]))
	bits := int(body[requestLen+4])
	if bits > 32 {
		return RequestIn{}, fmt.Errorf("%w: subnet /%d", ErrMalformed, bits)
	}
	r.Subnet = netip.PrefixFrom(addr, bits)
	if r.Subnet.Masked() != r.Subnet {
		return RequestIn{}, fmt.Errorf("%w: subnet %v has host bits", ErrMalformed, r.Subnet)
	}
	return r, nil
}

// usedSorted is every allocated address, sorted, for grant picking.
func (a *Allocator) usedSorted() []uint32 {
	used := make([]uint32, 0, len(a.allocs))
	for addr := range a.allocs {
		used = append(used, a2u(addr))
	}
	slices.Sort(used)
	return slices.Compact(used)
}
