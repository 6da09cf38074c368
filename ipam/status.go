package ipam

import (
	"bytes"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Status is what `weavewg status ipam` shows.
type Status struct {
	Self      key.Public
	Range     netip.Prefix
	Seed      Seed
	Peers     []PeerStatus // by key
	Allocated int          // addresses this peer handed out
	// WaitingForSpace: this peer owns no free address and has asked Donor.
	WaitingForSpace bool
	Donor           key.Public
	// Asked is when Donor was asked (zero when none is), Silent how many
	// donors asked for this want stayed silent, Reachable how many peers
	// this peer was told it reaches, and Ticked when Tick last ran: why a
	// peer that waits for space does not ask again (sim's reports).
	Asked     time.Time
	Silent    int
	Reachable int
	Ticked    time.Time
	Transfers []Transfer // rmpeer records
	// Err is the last refused ring (e.g. another network's), or "".
	Err      string
	Counters map[string]uint64
}

// PeerStatus is one owner's share of the range.
type PeerStatus struct {
	Peer     key.Public
	Prefixes []netip.Prefix
	Size     uint64 // addresses owned
	// Free is, for this peer, its free addresses now (allocations and
	// reserved addresses taken off its spans); for another, the count it
	// last published (its allocations since then show at its next tick).
	Free      uint64
	Reachable bool // false: show "unreachable!"
}

// Status returns a snapshot for display.
func (a *Allocator) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{
		Self: a.self, Range: a.ring.Range, Seed: a.ring.Seed, Allocated: len(a.allocs),
		WaitingForSpace: a.wantSpace, Donor: a.reqDonor, Silent: len(a.silent),
		Reachable: len(a.reachable), Ticked: a.ticked,
		Transfers: slices.Clone(a.ring.Transfers), Counters: maps.Clone(a.counters),
	}
	if !a.reqDonor.IsZero() {
		s.Asked = a.reqAt
	}
	if a.lastErr != nil {
		s.Err = a.lastErr.Error()
	}
	// One pass for every owner's spans and one for sizes and free
	// counts, where Spans and FreeOf per owner were O(owners × entries)
	// a call (CNI STATUS asks, through attachReady).
	all, owners := a.ring.allSpans(), a.ownersFreeLocked()
	for p, of := range owners {
		spans, size, free := all[p], of.size, of.free
		if p == a.self {
			// What we publish at the next tick, not what we published:
			// an attach just made (or space just inherited) shows at once.
			free = 0
			for _, sp := range spans {
				free += sp.Size() - a.usedIn(sp)
			}
		}
		s.Peers = append(s.Peers, PeerStatus{
			Peer: p, Prefixes: SpansToPrefixes(spans), Size: size,
			Free: free, Reachable: p == a.self || a.reachable[p],
		})
	}
	slices.SortFunc(s.Peers, func(x, y PeerStatus) int { return bytes.Compare(x.Peer[:], y.Peer[:]) })
	return s
}

// Counters returns a copy of the counters alone (Status computes every
// owner's prefixes too, O(owners × entries)).
func (a *Allocator) Counters() map[string]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.counters)
}
