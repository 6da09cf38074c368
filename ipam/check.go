package ipam

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// PeerView is what one peer knows: its ring and its own allocations.
type PeerView struct {
	Self   key.Public
	Ring   *Ring
	Allocs map[netip.Addr]string
}

// View returns a copy of this peer's state for Check.
func (a *Allocator) View() PeerView {
	a.mu.Lock()
	defer a.mu.Unlock()
	return PeerView{Self: a.self, Ring: a.ring.Clone(), Allocs: maps.Clone(a.allocs)}
}

// Check verifies the IPAM invariants over the views of several peers (of
// one network): every ring is well formed (covers the range exactly once);
// the rings merge; no address is owned by two peers, taking each peer's own
// claim from its own ring and requiring it to agree with the merge of all
// rings; every allocation lies in its peer's own ranges, is not a reserved
// network/broadcast address, and no address is allocated by two peers.
func Check(views []PeerView) error {
	var errs []error
	var merged *Ring
	for _, v := range views {
		if err := v.Ring.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", v.Self.Name(), err))
			continue
		}
		if merged == nil {
			merged = v.Ring.Clone()
		} else if _, err := merged.Merge(v.Ring); err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", v.Self.Name(), err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if merged == nil {
		return nil
	}
	if err := merged.Validate(); err != nil {
		return fmt.Errorf("merged ring: %w", err)
	}
	// Two Done claims for one dead peer give its space to two heirs (a
	// late entry of the dead peer maps to either): rmpeer's safety
	// (transfer.go) is that at most one issuer ever completes.
	heirs := map[key.Public]Transfer{}
	for _, t := range merged.Transfers {
		if !t.Done {
			continue
		}
		if o, dup := heirs[t.Dead]; dup {
			errs = append(errs, fmt.Errorf("the space of %s handed over twice: to %s (certificate of %d votes) and to %s (of %d)",
				t.Dead.Name(), o.Issuer.Name(), len(o.Cert), t.Issuer.Name(), len(t.Cert)))
		}
		heirs[t.Dead] = t
	}
	type claim struct {
		Span
		peer key.Public
	}
	var claims []claim
	for _, v := range views {
		own := v.Ring.Spans(v.Self)
		for _, s := range own {
			claims = append(claims, claim{s, v.Self})
			// The peer's claim must agree with everything known.
			for _, ms := range clip(merged, s) {
				if o := merged.heir(merged.Entries[ms].Owner); o != v.Self {
					errs = append(errs, fmt.Errorf("peer %s believes it owns %v but the merged ring gives %v to %s",
						v.Self.Name(), s, merged.entrySpan(ms), o.Name()))
				}
			}
		}
		sp := v.Ring.span()
		for addr, id := range v.Allocs {
			u := a2u(addr)
			if u == sp.First || u == sp.Last {
				errs = append(errs, fmt.Errorf("peer %s allocated reserved %v to %q", v.Self.Name(), addr, id))
			}
			if !slices.ContainsFunc(own, func(s Span) bool { return s.Contains(u) }) {
				errs = append(errs, fmt.Errorf("peer %s allocated %v (%q) outside its ranges", v.Self.Name(), addr, id))
			}
		}
	}
	slices.SortFunc(claims, func(x, y claim) int { return int(int64(x.First) - int64(y.First)) })
	for i := 1; i < len(claims); i++ {
		if claims[i].First <= claims[i-1].Last {
			errs = append(errs, fmt.Errorf("%v owned by both %s and %s (%v)",
				claims[i].Span, claims[i-1].peer.Name(), claims[i].peer.Name(), claims[i-1].Span))
		}
	}
	seen := map[netip.Addr]key.Public{}
	for _, v := range views {
		for addr := range v.Allocs {
			if p, dup := seen[addr]; dup {
				errs = append(errs, fmt.Errorf("%v allocated by both %s and %s", addr, p.Name(), v.Self.Name()))
			}
			seen[addr] = v.Self
		}
	}
	return errors.Join(errs...)
}

// clip returns the indexes of r's entries that overlap s.
func clip(r *Ring, s Span) []int {
	var out []int
	for i := max(r.find(s.First), 0); i < len(r.Entries) && r.Entries[i].Token <= s.Last; i++ {
		out = append(out, i)
	}
	return out
}
