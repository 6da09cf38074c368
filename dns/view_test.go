package dns

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// viewOf flattens a view: each name's addresses (IPv4 first), each
// address's names, the empty non-terminals.
func viewOf(s *Snapshot) (map[string][]netip.Addr, map[netip.Addr][]string, map[string]bool) {
	names := map[string][]netip.Addr{}
	ptr := map[netip.Addr][]string{}
	for _, m := range s.names {
		for n := range m {
			names[n] = s.Lookup(n)
		}
	}
	for _, m := range s.ptr {
		for a, ns := range m {
			ptr[a] = ns
		}
	}
	ents := map[string]bool{}
	maps.Copy(ents, s.ents)
	return names, ptr, ents
}

// wantView is the view from the table's entries, as it was built before
// it was kept incrementally: every live entry of a reachable owner.
func wantView(tb *Table) (map[string][]netip.Addr, map[netip.Addr][]string, map[string]bool) {
	var v4, v6 = map[string][]netip.Addr{}, map[string][]netip.Addr{}
	ptr := map[netip.Addr][]string{}
	ents := map[string]bool{}
	for _, e := range tb.Entries() {
		if !e.Reachable {
			continue
		}
		if e.Addr.Is4() {
			v4[e.Name] = append(v4[e.Name], e.Addr)
		} else {
			v6[e.Name] = append(v6[e.Name], e.Addr)
		}
		ptr[e.Addr] = append(ptr[e.Addr], e.Name)
		for rest := e.Name; strings.Contains(rest, "."); {
			rest = rest[strings.IndexByte(rest, '.')+1:]
			ents[rest] = true
		}
	}
	names := map[string][]netip.Addr{}
	for _, m := range []map[string][]netip.Addr{v4, v6} {
		for n, as := range m {
			slices.SortFunc(as, netip.Addr.Compare)
			m[n] = slices.Compact(as)
		}
	}
	for n := range v4 {
		names[n] = append(slices.Clone(v4[n]), v6[n]...)
	}
	for n := range v6 {
		names[n] = append(slices.Clone(v4[n]), v6[n]...)
	}
	for a, ns := range ptr {
		slices.Sort(ns)
		ptr[a] = slices.Compact(ns)
	}
	return names, ptr, ents
}

// TestViewMatchesTable: the view kept as the table changes answers what
// the table's entries say, whatever the changes (entries arriving,
// replaced and removed, tombstones expiring, owners going and coming
// back, our own names added and withdrawn) and however many came between
// two reads; and a view once read never changes.
func TestViewMatchesTable(t *testing.T) {
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 11))
		tb := NewTable(selfKey, TableOptions{TombstoneExpiry: 5 * time.Second, PeerExpiry: 20 * time.Second})
		const owners = 8
		names := []string{"web", "db", "api.prod", "x.api.prod", "prod", "a.b.c"}
		addr := func() netip.Addr {
			if rng.IntN(4) == 0 {
				return netip.AddrFrom16([16]byte{0xfd, 15: byte(rng.IntN(4))})
			}
			return netip.AddrFrom4([4]byte{10, 32, 0, byte(rng.IntN(6))})
		}
		up := map[key.Public]bool{}
		now := t0
		var old *Snapshot
		var oldNames map[string][]netip.Addr
		for step := range 600 {
			now = now.Add(time.Second)
			switch rng.IntN(7) {
			case 0, 1: // entries arrive
				var es []Entry
				for range 1 + rng.IntN(4) {
					o := peerKey(byte(10 + rng.IntN(owners)))
					if rng.IntN(6) == 0 {
						o = selfKey // a copy of ours: the owner's rules answer it
					}
					es = append(es, Entry{Owner: o, Name: names[rng.IntN(len(names))],
						Addr: addr(), Origin: []string{"", "c"}[rng.IntN(2)], Version: uint64(step + 1), Tombstone: rng.IntN(4) == 0})
				}
				tb.Merge(es, now)
			case 2: // our own
				if rng.IntN(2) == 0 {
					tb.Add(names[rng.IntN(len(names))], addr(), "o", now)
				} else {
					tb.Remove(names[rng.IntN(len(names))], netip.Addr{}, "", now)
				}
			case 3: // reachability, one peer
				p := peerKey(byte(10 + rng.IntN(owners)))
				up[p] = !up[p]
				if rng.IntN(2) == 0 {
					tb.SetPeerReachable(p, up[p], now)
				} else if up[p] {
					tb.PeersChanged([]key.Public{p}, nil, now)
				} else {
					tb.PeersChanged(nil, []key.Public{p}, now)
				}
			case 4: // reachability, all
				var l []key.Public
				for p, ok := range up {
					if ok {
						l = append(l, p)
					}
				}
				tb.SetReachable(l, now)
			case 5:
				tb.Expire(now)
			}
			if rng.IntN(3) != 0 {
				continue // changes pile up between reads
			}
			if old != nil {
				if got, _, _ := viewOf(old); !maps.EqualFunc(got, oldNames, slices.Equal) {
					t.Fatalf("seed %d step %d: a view read earlier changed", seed, step)
				}
			}
			s := tb.Snapshot()
			gn, gp, ge := viewOf(s)
			wn, wp, we := wantView(tb)
			if !maps.EqualFunc(gn, wn, slices.Equal) {
				t.Fatalf("seed %d step %d: names\n%v\nwant\n%v", seed, step, gn, wn)
			}
			if !maps.EqualFunc(gp, wp, slices.Equal) {
				t.Fatalf("seed %d step %d: addresses\n%v\nwant\n%v", seed, step, gp, wp)
			}
			if !maps.Equal(ge, we) {
				t.Fatalf("seed %d step %d: empty non-terminals %v, want %v", seed, step, ge, we)
			}
			old, oldNames = s, gn
		}
		if len(tb.live) > len(tb.entries) {
			t.Errorf("seed %d: %d counted pairs for %d entries", seed, len(tb.live), len(tb.entries))
		}
	}
}

// TestViewReadWhileChanging: answers read views while gossip changes the
// table (run with -race: a view shared with readers must never be
// written).
func TestViewReadWhileChanging(t *testing.T) {
	tb := NewTable(selfKey, TableOptions{})
	done := make(chan struct{})
	read := make(chan int)
	for range 2 {
		go func() {
			n := 0
			for {
				select {
				case <-done:
					read <- n
					return
				default:
				}
				s := tb.Snapshot()
				n += len(s.Lookup("web")) + len(s.Names(netip.AddrFrom4([4]byte{10, 32, 0, 1})))
			}
		}()
	}
	for i := range 2000 {
		e := Entry{Owner: peerKey(byte(10 + i%7)), Name: []string{"web", "db"}[i%2],
			Addr: netip.AddrFrom4([4]byte{10, 32, 0, byte(i % 5)}), Version: uint64(i + 1), Tombstone: i%3 == 0}
		tb.Merge([]Entry{e}, t0)
	}
	close(done)
	<-read
	<-read
	names, _, _ := viewOf(tb.Snapshot())
	if want, _, _ := wantView(tb); !maps.EqualFunc(names, want, slices.Equal) {
		t.Fatalf("names %v, want %v", names, want)
	}
}
