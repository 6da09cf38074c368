package dns

import (
	"hash/maphash"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/types/key"
)

// The answerable view, kept incrementally (issue 18). Built from the
// whole table at the first read after a change, it cost each peer
// O(entries) for every name that arrived anywhere, once it was asked a
// name: 3-5 ms at 1,000 owners (BenchmarkAnswerAfterChange), and the
// answer path's ready-made records as much again. Now the table counts,
// as it changes, the answerable rows of each (name, address) and notes
// the pairs whose count went to or from zero; a build copies the last
// view and redoes only those pairs, in the shards of the view they fall
// in (viewShards maps by name and by address, copied on write, so a view
// once built is never written and readers take no lock). A name's
// records are made at its first answer and kept with its addresses, so
// a change of one name costs the answer path that name.

// nameAddr is one (name, address) of the view.
type nameAddr struct {
	name string
	addr netip.Addr
}

// viewShards is the number of maps of names, and of addresses, a view is
// cut into: a build copies the ones that changed, at 1,000 owners each
// holds about 16 names.
const viewShards = 64

var viewSeed = maphash.MakeSeed()

func nameShard(n string) int { return int(maphash.String(viewSeed, n) % viewShards) }

func addrShard(a netip.Addr) int {
	b := a.As16()
	return int(maphash.Bytes(viewSeed, b[:]) % viewShards)
}

// answerableLocked reports whether r is in the view: live, and its owner
// not marked unreachable.
func (t *Table) answerableLocked(r *row) bool {
	if r.Tombstone {
		return false
	}
	_, down := t.down[r.Owner]
	return !down
}

// countLocked adds d to the answerable rows of r's (name, address), noting
// the pair for the next build when it goes to or from none. Call it
// whenever r enters (d = 1) or leaves (d = -1) the view.
func (t *Table) countLocked(r *row, d int32) {
	k := nameAddr{r.Name, r.Addr}
	was := t.live[k]
	now := was + d
	if now <= 0 {
		delete(t.live, k)
	} else {
		t.live[k] = now
	}
	if (was > 0) != (now > 0) {
		t.touched[k] = struct{}{}
	}
}

// markDownLocked marks p unreachable since now, taking its entries out of
// the view; false if it was already.
func (t *Table) markDownLocked(p key.Public, now time.Time) bool {
	if _, ok := t.down[p]; ok {
		return false
	}
	if o := t.owners[p]; o != nil {
		for _, r := range o.rows {
			if t.answerableLocked(r) {
				t.countLocked(r, -1)
			}
		}
	}
	t.down[p] = now
	return true
}

// markUpLocked marks p reachable, putting its live entries back in the
// view; false if it was not marked unreachable.
func (t *Table) markUpLocked(p key.Public) bool {
	if _, ok := t.down[p]; !ok {
		return false
	}
	delete(t.down, p)
	if o := t.owners[p]; o != nil {
		for _, r := range o.rows {
			if t.answerableLocked(r) {
				t.countLocked(r, 1)
			}
		}
	}
	return true
}

// Snapshot is an immutable view of the answerable names: live entries of
// reachable owners. Addresses are deduplicated and sorted.
type Snapshot struct {
	names [viewShards]map[string]*nameAddrs
	// ents holds the empty non-terminals: "b" when only "a.b" exists. They
	// exist (NODATA), they just have no addresses.
	ents map[string]bool
	ptr  [viewShards]map[netip.Addr][]string
}

// nameAddrs is one name's addresses, never modified once in a view (a
// change makes a new one), with its answer records made at its first
// answer (Server.records).
type nameAddrs struct {
	v4, v6 []netip.Addr
	rrs    atomic.Pointer[nameRRs]
}

// nameRRs are a name's A and AAAA records, shared by concurrent answers
// and never modified (miekg/dns's Msg.Pack does not write to them).
type nameRRs struct {
	a, aaaa []mdns.RR
}

var emptySnapshot = &Snapshot{}

// name returns the addresses of name, nil if it has none.
func (s *Snapshot) name(n string) *nameAddrs { return s.names[nameShard(n)][n] }

// Lookup returns the addresses of name (canonical form), IPv4 first.
func (s *Snapshot) Lookup(name string) []netip.Addr {
	n := s.name(name)
	if n == nil {
		return nil
	}
	return append(slices.Clip(n.v4), n.v6...)
}

// Names returns the names that have addr.
func (s *Snapshot) Names(addr netip.Addr) []string { return slices.Clone(s.ptrOf(addr)) }

func (s *Snapshot) ptrOf(a netip.Addr) []string { return s.ptr[addrShard(a)][a] }

// buildLocked makes the view: the last one with the pairs touched since
// redone.
func (t *Table) buildLocked() *Snapshot {
	prev := t.built
	s := *prev
	var namesCopied, ptrCopied [viewShards]bool
	entsCopied := false
	for k := range t.touched {
		on := t.live[k] > 0
		i := nameShard(k.name)
		if !namesCopied[i] {
			s.names[i] = copyMap(prev.names[i])
			namesCopied[i] = true
		}
		old := s.names[i][k.name]
		n := old.with(k.addr, on)
		if n == nil {
			delete(s.names[i], k.name)
		} else {
			s.names[i][k.name] = n
		}
		if (old == nil) != (n == nil) {
			d := int32(1)
			if n == nil {
				d = -1
			}
			for rest := k.name; ; {
				j := strings.IndexByte(rest, '.')
				if j < 0 {
					break
				}
				rest = rest[j+1:]
				c := t.entRefs[rest] + d
				if c <= 0 {
					delete(t.entRefs, rest)
				} else {
					t.entRefs[rest] = c
				}
				if (c > 0) != (c-d > 0) {
					if !entsCopied {
						s.ents = copyMap(prev.ents)
						entsCopied = true
					}
					if c > 0 {
						s.ents[rest] = true
					} else {
						delete(s.ents, rest)
					}
				}
			}
		}
		j := addrShard(k.addr)
		if !ptrCopied[j] {
			s.ptr[j] = copyMap(prev.ptr[j])
			ptrCopied[j] = true
		}
		if ns := withName(s.ptr[j][k.addr], k.name, on); len(ns) == 0 {
			delete(s.ptr[j], k.addr)
		} else {
			s.ptr[j][k.addr] = ns
		}
	}
	clear(t.touched)
	t.built = &s
	return &s
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	if m == nil {
		return make(map[K]V)
	}
	return maps.Clone(m)
}

// with returns n with a in it (on) or not: n itself when that changes
// nothing, else a new nameAddrs; nil when no address is left.
func (n *nameAddrs) with(a netip.Addr, on bool) *nameAddrs {
	var v4, v6 []netip.Addr
	if n != nil {
		v4, v6 = n.v4, n.v6
	}
	list := &v4
	if !a.Is4() {
		list = &v6
	}
	i, found := slices.BinarySearchFunc(*list, a, netip.Addr.Compare)
	switch {
	case found == on:
		return n
	case on:
		*list = slices.Insert(slices.Clone(*list), i, a)
	default:
		*list = slices.Delete(slices.Clone(*list), i, i+1)
	}
	if len(v4) == 0 && len(v6) == 0 {
		return nil
	}
	return &nameAddrs{v4: slices.Clip(v4), v6: slices.Clip(v6)}
}

// withName returns the sorted names ns with name in it (on) or not: ns
// itself when that changes nothing, else a new slice.
func withName(ns []string, name string, on bool) []string {
	i, found := slices.BinarySearch(ns, name)
	switch {
	case found == on:
		return ns
	case on:
		return slices.Clip(slices.Insert(slices.Clone(ns), i, name))
	default:
		return slices.Clip(slices.Delete(slices.Clone(ns), i, i+1))
	}
}
