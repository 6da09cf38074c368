package dns

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

var t0 = time.Unix(1_700_000_000, 0)

// randomEntries draws entries from a small space so identities collide.
func randomEntries(r *rand.Rand, n int) []Entry {
	names := []string{"web", "db", "api.prod"}
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry{
			Owner:     peerKey(byte(10 + r.IntN(3))), // never selfKey: pure CRDT
			Name:      names[r.IntN(len(names))],
			Addr:      netip.AddrFrom4([4]byte{10, 32, 0, byte(r.IntN(3))}),
			Origin:    []string{"", "c1"}[r.IntN(2)],
			Version:   uint64(r.IntN(4)),
			Tombstone: r.IntN(2) == 0,
		}
	}
	return out
}

func merged(self key.Public, batches ...[]Entry) []Entry {
	t := NewTable(self, TableOptions{})
	for _, b := range batches {
		t.Merge(b, t0)
	}
	return t.All()
}

func TestMergeProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		a, b, c := randomEntries(r, r.IntN(8)), randomEntries(r, r.IntN(8)), randomEntries(r, r.IntN(8))
		ab := merged(selfKey, a, b)
		if ba := merged(selfKey, b, a); !slices.Equal(ab, ba) {
			t.Fatalf("%d: not commutative:\n%v\n%v", i, ab, ba)
		}
		abc1 := merged(selfKey, merged(selfKey, a, b), c)
		abc2 := merged(selfKey, a, merged(selfKey, b, c))
		if !slices.Equal(abc1, abc2) {
			t.Fatalf("%d: not associative:\n%v\n%v", i, abc1, abc2)
		}
		if aa := merged(selfKey, a, a); !slices.Equal(aa, merged(selfKey, a)) {
			t.Fatalf("%d: not idempotent", i)
		}
		// Merging a table's own state into itself changes nothing.
		tb := NewTable(selfKey, TableOptions{})
		tb.Merge(ab, t0)
		if news, replies := tb.Merge(tb.All(), t0); len(news)+len(replies) != 0 {
			t.Fatalf("%d: self-merge reported news %v %v", i, news, replies)
		}
	}
}

func TestAddRemoveAndConvergence(t *testing.T) {
	a := NewTable(peerKey(1), TableOptions{})
	b := NewTable(peerKey(2), TableOptions{})
	web1 := netip.MustParseAddr("10.32.0.1")
	web2 := netip.MustParseAddr("10.40.0.1")
	upA, err := a.Add("web", web1, "c1", t0)
	must(t, err)
	upB, err := b.Add("web", web2, "c2", t0)
	must(t, err)
	if again, _ := a.Add("web", web1, "c1", t0); again != nil {
		t.Errorf("re-adding a live entry broadcast %v", again)
	}
	b.Merge(upA, t0)
	a.Merge(upB, t0)
	for _, tb := range []*Table{a, b} {
		if got := tb.Snapshot().Lookup("web"); len(got) != 2 {
			t.Fatalf("lookup %v", got)
		}
	}
	// Detach on a: the tombstone reaches b, web has only b's address.
	ts := a.Remove("", netip.Addr{}, "c1", t0.Add(time.Second))
	if len(ts) != 1 || !ts[0].Tombstone || ts[0].Version <= upA[0].Version {
		t.Fatalf("tombstone %v", ts)
	}
	b.Merge(ts, t0.Add(time.Second))
	if got := b.Snapshot().Lookup("web"); len(got) != 1 || got[0] != web2 {
		t.Fatalf("after remove %v", got)
	}
	// The stale live copy arriving late changes nothing.
	if news, _ := b.Merge(upA, t0.Add(2*time.Second)); len(news) != 0 {
		t.Fatalf("stale copy accepted")
	}
	if !slices.Equal(a.All(), b.All()) {
		t.Fatalf("not converged:\n%v\n%v", a.All(), b.All())
	}
	// Re-attach with the same name and address: live again, newer version.
	up, _ := a.Add("web", web1, "c1", t0.Add(3*time.Second))
	b.Merge(up, t0.Add(3*time.Second))
	if got := b.Snapshot().Lookup("web"); len(got) != 2 {
		t.Fatalf("after re-add %v", got)
	}
	// Clock going backwards still gives increasing versions.
	up2 := a.Remove("web", web1, "", t0)
	if up2[0].Version <= up[0].Version {
		t.Fatalf("version went back: %d after %d", up2[0].Version, up[0].Version)
	}
}

func TestOwnerAuthority(t *testing.T) {
	// Peer a restarted with an empty table; b still has a's old entry.
	a := NewTable(peerKey(1), TableOptions{})
	stale := Entry{Owner: peerKey(1), Name: "old", Addr: netip.MustParseAddr("10.32.0.3"), Version: uint64(t0.Add(time.Hour).UnixNano())}
	news, replies := a.Merge([]Entry{stale}, t0)
	if len(news) != 0 || len(replies) != 1 || !replies[0].Tombstone || replies[0].Version <= stale.Version {
		t.Fatalf("owner did not bury its stale entry: news %v replies %v", news, replies)
	}
	if got := a.Snapshot().Lookup("old"); got != nil {
		t.Fatalf("stale entry answered: %v", got)
	}
	// A tombstone for an entry a holds live: a re-asserts it.
	up, _ := a.Add("web", netip.MustParseAddr("10.32.0.4"), "c", t0)
	forged := up[0]
	forged.Tombstone = true
	forged.Version++
	_, replies = a.Merge([]Entry{forged}, t0)
	if len(replies) != 1 || replies[0].Tombstone || replies[0].Version <= forged.Version {
		t.Fatalf("owner did not re-assert: %v", replies)
	}
	// Its own state at a higher version with the same flag: adopted silently.
	same := replies[0]
	same.Version += 10
	if news, replies := a.Merge([]Entry{same}, t0); len(news)+len(replies) != 0 {
		t.Fatalf("same state re-broadcast: %v %v", news, replies)
	}
	if next, _ := a.Add("x", netip.MustParseAddr("10.32.0.5"), "", t0); next[0].Version <= same.Version {
		t.Fatalf("stamp %d not above adopted %d", next[0].Version, same.Version)
	}
}

func TestTombstoneExpiry(t *testing.T) {
	tb := NewTable(selfKey, TableOptions{TombstoneExpiry: time.Minute})
	_, err := tb.Add("web", netip.MustParseAddr("10.32.0.1"), "c", t0)
	must(t, err)
	tb.Remove("web", netip.Addr{}, "", t0.Add(time.Second))
	tb.Expire(t0.Add(50 * time.Second))
	if len(tb.All()) != 1 {
		t.Fatalf("tombstone expired early")
	}
	tb.Expire(t0.Add(61 * time.Second))
	if len(tb.All()) != 0 {
		t.Fatalf("tombstone not expired: %v", tb.All())
	}
}

func TestPeerWithdrawal(t *testing.T) {
	tb := NewTable(selfKey, TableOptions{PeerExpiry: time.Hour})
	_, _ = tb.Add("web", netip.MustParseAddr("10.32.0.1"), "c", t0)
	tb.Merge([]Entry{
		{Owner: otherKey, Name: "web", Addr: netip.MustParseAddr("10.32.1.1"), Version: 1},
		{Owner: otherKey, Name: "db", Addr: netip.MustParseAddr("10.32.1.2"), Version: 1},
	}, t0)
	tb.SetReachable(nil, t0) // other is gone
	if got := tb.Snapshot().Lookup("db"); got != nil {
		t.Fatalf("db still answered: %v", got)
	}
	if got := tb.Snapshot().Lookup("web"); len(got) != 1 {
		t.Fatalf("own web withdrawn: %v", got)
	}
	es := tb.Entries()
	if len(es) != 3 || es[0].Reachable { // db first
		t.Fatalf("entries %v", es)
	}
	tb.SetPeerReachable(otherKey, true, t0.Add(time.Minute))
	if got := tb.Snapshot().Lookup("db"); len(got) != 1 {
		t.Fatalf("db not back: %v", got)
	}
	tb.SetPeerReachable(otherKey, false, t0.Add(2*time.Minute))
	tb.Expire(t0.Add(time.Hour + time.Minute))
	if len(tb.All()) != 3 {
		t.Fatalf("expired before PeerExpiry")
	}
	tb.Expire(t0.Add(time.Hour + 2*time.Minute))
	if all := tb.All(); len(all) != 1 || all[0].Owner != selfKey {
		t.Fatalf("unreachable peer's entries not deleted: %v", all)
	}
}

func TestCanonicalName(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"web", "web", true},
		{"Web.Weave.Local.", "web", true},
		{"web.weave.local", "web", true},
		{"api.prod", "api.prod", true},
		{"my_svc-1", "my_svc-1", true},
		{"", "", false},
		{"weave.local.", "", false},
		{"a..b", "", false},
		{".a", "", false},
		{"a b", "", false},
		{"é", "", false},
		{string(make([]byte, 64)), "", false},
	}
	for _, tt := range tests {
		got, err := CanonicalName(tt.in, "weave.local.")
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("CanonicalName(%q) = %q, %v", tt.in, got, err)
		}
	}
}

// TestPeersChangedMatchesSetReachable drives one table with the whole
// reachable set after every change (SetReachable, as the daemon's
// reconcile did) and another with SetReachable once and then only the
// peers that changed (PeersChanged), while entries of random owners
// arrive, and checks that both answer the same names, and mark the same
// peers' entries unreachable, after every step.
func TestPeersChangedMatchesSetReachable(t *testing.T) {
	for seed := range uint64(5) {
		rng := rand.New(rand.NewPCG(seed, 3))
		full, inc := NewTable(selfKey, TableOptions{}), NewTable(selfKey, TableOptions{})
		const owners = 12
		up := map[key.Public]bool{}
		list := func() []key.Public {
			var l []key.Public
			for p := range up {
				l = append(l, p)
			}
			return l
		}
		now := t0
		full.SetReachable(list(), now)
		inc.SetReachable(list(), now)
		for step := range 400 {
			now = now.Add(time.Second)
			var ups, downs []key.Public
			switch op := rng.IntN(3); op {
			case 0: // entries arrive, from owners reachable or not
				var es []Entry
				for range 1 + rng.IntN(4) {
					o := peerKey(byte(10 + rng.IntN(owners)))
					es = append(es, Entry{Owner: o, Name: fmt.Sprintf("n%d", rng.IntN(20)),
						Addr: netip.AddrFrom4([4]byte{10, 32, 0, byte(rng.IntN(50))}), Version: uint64(step + 1), Tombstone: rng.IntN(5) == 0})
				}
				full.Merge(es, now)
				inc.Merge(es, now)
			default: // a few peers become reachable or unreachable
				for _, i := range rng.Perm(owners)[:1+rng.IntN(3)] {
					p := peerKey(byte(10 + i))
					if up[p] {
						delete(up, p)
						downs = append(downs, p)
					} else {
						up[p] = true
						ups = append(ups, p)
					}
				}
			}
			full.SetReachable(list(), now)
			inc.PeersChanged(ups, downs, now)
			a, b := full.Snapshot(), inc.Snapshot()
			for i := range 20 {
				n := fmt.Sprintf("n%d", i)
				if x, y := a.Lookup(n), b.Lookup(n); !slices.Equal(x, y) {
					t.Fatalf("seed %d step %d: %s answers %v after SetReachable, %v after PeersChanged", seed, step, n, x, y)
				}
			}
			sa, sb := full.Entries(), inc.Entries()
			if len(sa) != len(sb) {
				t.Fatalf("seed %d step %d: %d entries against %d", seed, step, len(sa), len(sb))
			}
			for i := range sa {
				if sa[i].Reachable != sb[i].Reachable {
					t.Fatalf("seed %d step %d: %s of %s reachable %v after SetReachable, %v after PeersChanged", seed, step, sa[i].Name, sa[i].Owner.Name(), sa[i].Reachable, sb[i].Reachable)
				}
			}
		}
	}
}

// entriesOf gives what a filter of All gives, owner by owner, in All's
// order.
func TestEntriesOfMatchesAll(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	tb := NewTable(selfKey, TableOptions{})
	for i := range 300 {
		tb.Merge([]Entry{{Owner: peerKey(byte(10 + rng.IntN(20))), Name: fmt.Sprintf("n%d", rng.IntN(40)),
			Addr: netip.AddrFrom4([4]byte{10, 32, 0, byte(rng.IntN(200))}), Version: uint64(i + 1), Tombstone: rng.IntN(4) == 0}}, t0)
	}
	owners := map[key.Public]bool{peerKey(10): true, peerKey(13): true, peerKey(29): true, peerKey(99): true}
	got := tb.entriesOf(owners)
	want := map[key.Public][]Entry{}
	for _, e := range tb.All() {
		if owners[e.Owner] {
			want[e.Owner] = append(want[e.Owner], e)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d owners' entries, want %d", len(got), len(want))
	}
	for o, es := range want {
		if !slices.Equal(got[o], es) {
			t.Fatalf("%s: %d entries, want %d (or another order)", o.Name(), len(got[o]), len(es))
		}
	}
}

// The digest a table keeps (buckets of owners' newest versions, updated on
// every change) is the one computed from scratch from All, and so is its
// summary, under every kind of change: arrivals of others' entries and of
// copies of our own, our adds and removes, tombstone and peer expiry.
func TestKeptDigestMatchesScratch(t *testing.T) {
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 18))
		owner := func() key.Public {
			var k key.Public
			k[0], k[1] = byte(rng.IntN(3)), byte(rng.IntN(8)) // few buckets, several owners each
			if rng.IntN(6) == 0 {
				return selfKey
			}
			return k
		}
		tb := NewTable(selfKey, TableOptions{TombstoneExpiry: 30 * time.Second, PeerExpiry: time.Minute})
		now := t0
		var up []key.Public
		for step := range 600 {
			now = now.Add(time.Second)
			switch rng.IntN(6) {
			case 0, 1:
				var es []Entry
				for range 1 + rng.IntN(3) {
					es = append(es, Entry{Owner: owner(), Name: fmt.Sprintf("n%d", rng.IntN(6)),
						Addr: netip.AddrFrom4([4]byte{10, 32, 0, byte(rng.IntN(4))}), Version: uint64(rng.IntN(2 * (step + 1))), Tombstone: rng.IntN(3) == 0})
				}
				tb.Merge(es, now)
			case 2:
				tb.Add(fmt.Sprintf("s%d", rng.IntN(4)), netip.AddrFrom4([4]byte{10, 32, 1, byte(rng.IntN(3))}), "", now)
			case 3:
				tb.Remove(fmt.Sprintf("s%d", rng.IntN(4)), netip.Addr{}, "", now)
			case 4:
				up = append(up[:0], owner(), owner())
				tb.SetReachable(up, now)
			default:
				now = now.Add(time.Duration(rng.IntN(40)) * time.Second)
				tb.Expire(now)
			}
			m := map[key.Public]uint64{}
			for _, e := range tb.All() {
				m[e.Owner] = max(m[e.Owner], e.Version)
			}
			hs := tb.digest()
			if got, want := appendDigestHashes(nil, &hs), appendDigest(nil, m); !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: kept digest %x, from scratch %x", seed, step, got, want)
			}
			var all [digestBuckets]bool
			for i := range all {
				all[i] = true
			}
			ps := tb.summaryOf(&all)
			n := 0
			for _, v := range m {
				if v > 0 {
					n++
				}
			}
			if len(ps) != n {
				t.Fatalf("seed %d step %d: summary of %d owners, want %d", seed, step, len(ps), n)
			}
			for i, v := range tb.newestOf(ps) {
				if v != m[ps[i].Owner] || ps[i].Version != v {
					t.Fatalf("seed %d step %d: %s newest %d (summary %d), want %d", seed, step, ps[i].Owner.Name(), v, ps[i].Version, m[ps[i].Owner])
				}
			}
		}
	}
}
