package ipam

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// Test keys are real key pairs (ring items are signed), found by search so
// that pk(i)'s first byte is i+1: keys sort by i, and the tests' orders
// (smallest key wins) and the simulation's peer numbers in failure reports
// (key[0]-1) stay readable.
var testKeys = struct {
	sync.Mutex
	priv  map[int]key.Private
	byPub map[key.Public]key.Private
}{priv: map[int]key.Private{}, byPub: map[key.Public]key.Private{}}

func sk(i int) key.Private {
	testKeys.Lock()
	defer testKeys.Unlock()
	if k, ok := testKeys.priv[i]; ok {
		return k
	}
	for n := 0; ; n++ {
		seed := sha256.Sum256(fmt.Appendf(nil, "ipam test key %d %d", i, n))
		k, err := key.ParsePrivate(base64.StdEncoding.EncodeToString(seed[:]))
		if err != nil {
			panic(err)
		}
		if p := k.Public(); p[0] == byte(i+1) {
			testKeys.priv[i] = k
			testKeys.byPub[p] = k
			return k
		}
	}
}

func pk(i int) key.Public { return sk(i).Public() }

// privOf is the private key of a test key made by pk.
func privOf(p key.Public) key.Private {
	testKeys.Lock()
	defer testKeys.Unlock()
	return testKeys.byPub[p]
}

var testRange = netip.MustParsePrefix("10.32.0.0/12")

func mustRing(t testing.TB) *Ring {
	r, err := NewRing(testRange)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// history evolves the rings of n peers of one network by random grants,
// free updates, rmpeer steps and partial merges, and returns every
// intermediate state: material for the merge properties.
func history(t testing.TB, rng *rand.Rand, n, steps int) []*Ring {
	rings := make([]*Ring, n)
	for i := range rings {
		rings[i] = mustRing(t)
	}
	if err := rings[0].SeedTo(pk(0), 42); err != nil {
		t.Fatal(err)
	}
	var snaps []*Ring
	for range steps {
		i := rng.IntN(n)
		r := rings[i]
		switch rng.IntN(5) {
		case 0, 1: // merge from another peer
			if _, err := r.Merge(rings[rng.IntN(n)]); err != nil {
				t.Fatal(err)
			}
		case 2: // grant part of one of our entries
			spans := r.Spans(pk(i))
			if len(spans) == 0 {
				continue
			}
			s := spans[rng.IntN(len(spans))]
			j := r.find(s.First)
			es := r.entrySpan(j)
			if es.Size() < 2 {
				continue
			}
			first := es.First + uint32(rng.Uint64N(es.Size()-1)) + 1
			last := first + uint32(rng.Uint64N(uint64(es.Last-first)+1))
			if err := r.Grant(pk(i), pk(rng.IntN(n)), Span{first, last}); err != nil && !errors.Is(err, ErrRingFull) {
				t.Fatal(err)
			}
		case 3: // free count update
			for j := range r.Entries {
				if r.heir(r.Entries[j].Owner) == pk(i) && rng.IntN(3) == 0 {
					r.setFree(pk(i), j, rng.Uint32N(100))
				}
			}
		case 4: // rmpeer activity
			if rng.IntN(4) == 0 {
				r.RemovePeer(pk(i), pk(rng.IntN(n)))
			}
			var reach []key.Public
			for j := range n {
				if rng.IntN(2) == 0 {
					reach = append(reach, pk(j))
				}
			}
			r.StepTransfers(pk(i), reach)
		}
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, r.Clone())
	}
	return snaps
}

func merged(t testing.TB, rs ...*Ring) *Ring {
	out := rs[0].Clone()
	for _, r := range rs[1:] {
		if _, err := out.Merge(r); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestMergeLaws(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	for range rounds {
		snaps := history(t, rng, 5, 200)
		pick := func() *Ring { return snaps[rng.IntN(len(snaps))] }
		for range 100 {
			a, b, c := pick(), pick(), pick()
			if ab, ba := merged(t, a, b), merged(t, b, a); !ab.Equal(ba) {
				t.Fatalf("merge not commutative")
			}
			if l, r := merged(t, merged(t, a, b), c), merged(t, a, merged(t, b, c)); !l.Equal(r) {
				t.Fatalf("merge not associative")
			}
			aa := a.Clone()
			if changed, _ := aa.Merge(a); changed || !aa.Equal(a) {
				t.Fatalf("merge not idempotent")
			}
			if err := merged(t, a, b).Validate(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestSeedMismatch(t *testing.T) {
	a, b := mustRing(t), mustRing(t)
	a.SeedTo(pk(1), 7)
	b.SeedTo(pk(2), 9)
	a0, b0 := a.Clone(), b.Clone()
	_, err := a.Merge(b)
	if !errors.Is(err, ErrSeedMismatch) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{pk(1).Name(), pk(2).Name(), "0000000000000007", "0000000000000009"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if !a.Equal(a0) || !b.Equal(b0) {
		t.Fatal("refused merge changed a ring")
	}
	// An unseeded ring adopts either.
	c := mustRing(t)
	if changed, err := c.Merge(a); err != nil || !changed || !c.Equal(a) {
		t.Fatalf("adopt: %v %v", changed, err)
	}
}

func TestGrantAndPrefixes(t *testing.T) {
	r := mustRing(t)
	r.SeedTo(pk(0), 1)
	// Give 10.40.0.0/13 (the upper half) to peer 1.
	half := Span{a2u(netip.MustParseAddr("10.40.0.0")), a2u(netip.MustParseAddr("10.47.255.255"))}
	if err := r.Grant(pk(0), pk(1), half); err != nil {
		t.Fatal(err)
	}
	if err := r.Grant(pk(2), pk(1), half); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("grant by non-owner: %v", err)
	}
	tests := []struct {
		name string
		peer key.Public
		want string
	}{
		{"donor", pk(0), "[10.32.0.0/13]"},
		{"donee", pk(1), "[10.40.0.0/13]"},
		{"none", pk(2), "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmtPrefixes(SpansToPrefixes(r.Spans(tt.peer))); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	if o, _ := r.Owner(netip.MustParseAddr("10.44.1.2")); o != pk(1) {
		t.Errorf("owner = %s", o.Name())
	}
}

func fmtPrefixes(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestSpanPrefixes(t *testing.T) {
	tests := []struct {
		name        string
		first, last string
		want        string
	}{
		{"single", "10.0.0.5", "10.0.0.5", "[10.0.0.5/32]"},
		{"aligned", "10.0.0.0", "10.0.0.255", "[10.0.0.0/24]"},
		{"ragged", "10.0.0.1", "10.0.0.6", "[10.0.0.1/32 10.0.0.2/31 10.0.0.4/31 10.0.0.6/32]"},
		{"all", "0.0.0.0", "255.255.255.255", "[0.0.0.0/0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Span{a2u(netip.MustParseAddr(tt.first)), a2u(netip.MustParseAddr(tt.last))}
			if got := fmtPrefixes(s.Prefixes()); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestRemovePeerRace: two issuers, each alone with its own voters, then
// heal: exactly one completes.
func TestRemovePeerRace(t *testing.T) {
	base := mustRing(t)
	base.SeedTo(pk(0), 1)
	// Peers 0..3 own a quarter each; peer 3 dies.
	q := uint32(1 << 18)
	first := base.span().First
	for i := 1; i < 4; i++ {
		if err := base.Grant(pk(0), pk(i), Span{first + uint32(i)*q, first + uint32(i+1)*q - 1}); err != nil {
			t.Fatal(err)
		}
	}
	r1, r2 := base.Clone(), base.Clone()
	if err := r1.RemovePeer(pk(1), pk(3)); err != nil {
		t.Fatal(err)
	}
	if err := r2.RemovePeer(pk(2), pk(3)); err != nil {
		t.Fatal(err)
	}
	// Each side steps with only itself reachable: no completion (the other
	// owners have not voted).
	r1.StepTransfers(pk(1), nil)
	r2.StepTransfers(pk(2), nil)
	if r1.removed(pk(3)) || r2.removed(pk(3)) {
		t.Fatal("completed without the votes of every owner")
	}
	// Heal: everyone merges and steps until quiet.
	rings := []*Ring{base.Clone(), r1, r2}
	self := []key.Public{pk(0), pk(1), pk(2)}
	all := []key.Public{pk(0), pk(1), pk(2)}
	for range 5 {
		m := merged(t, rings...)
		for i := range rings {
			rings[i].Merge(m)
			rings[i].StepTransfers(self[i], all)
		}
	}
	m := merged(t, rings...)
	if heir, ok := m.doneTransfer(pk(3)); !ok || heir != pk(1) {
		t.Fatalf("heir = %s, %v; want the smaller issuer", heir.Name(), ok)
	}
	n := 0
	for _, tr := range m.Transfers {
		if tr.Done {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d transfers completed", n)
	}
}

// TestMergeInPlaceUndo: a received ring is merged into the ring itself
// (undo.go); what the merge records must undo it exactly (a result that
// would not encode is refused, and the ring must be as before), and must
// name the entries that changed as a comparison of the two rings does
// (a relay part's news).
func TestMergeInPlaceUndo(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	accept := func(key.Public, string, []byte, *key.Signature) error { return nil }
	snaps := history(t, rng, 5, 200)
	for round := range 400 {
		x, y := snaps[rng.IntN(len(snaps))], snaps[rng.IntN(len(snaps))]
		self, from := pk(rng.IntN(5)), pk(rng.IntN(5))
		a, err := Open(Config{Self: self, Private: privOf(self), Range: testRange, Verify: accept})
		if err != nil {
			t.Fatal(err)
		}
		a.mu.Lock()
		a.ring = x.Clone()
		u := &mergeUndo{}
		changed, _ := a.mergeCheckedLocked(a.ring, y, from, nil, u)
		if a.retryHeldLocked(a.ring, u) {
			changed = true
		}
		if err := a.ring.Validate(); err != nil {
			t.Fatalf("round %d: merged ring: %v", round, err)
		}
		if changed != !a.ring.Equal(x) {
			t.Fatalf("round %d: merge reports changed %v, ring changed %v", round, changed, !a.ring.Equal(x))
		}
		wantMarks, wantAny, wantVotes := changedSince(a.ring, x)
		marks, anyEntry, votes := u.marks(a.ring)
		if !slices.Equal(marks, wantMarks) || anyEntry != wantAny || votes != wantVotes {
			t.Fatalf("round %d: the record marks %v %v %v, the rings differ at %v %v %v", round, marks, anyEntry, votes, wantMarks, wantAny, wantVotes)
		}
		u.undo(a.ring)
		if !a.ring.Equal(x) {
			t.Fatalf("round %d: undone ring differs from the ring before the merge", round)
		}
		a.mu.Unlock()
		a.Close()
	}
}
