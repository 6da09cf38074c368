package ipam

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// Every read of a ring's own index (own.go) and of the kept digest
// (digest.go) in this package's tests
// compares it with a pass over the whole ring: the tests' merges, grants,
// rmpeers and undone merges check that every change keeps it true. The
// benchmarks turn it off (benchPeer).
func init() { checkDerived = true }

// TestAllPrefixesMatchesSpans: AllPrefixes and Status, one pass over the
// ring each, give every effective owner the prefixes of its Spans (and
// Status its size and FreeOf), on rings with grants, rmpeers and
// inherited entries.
func TestAllPrefixesMatchesSpans(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for round, r := range history(t, rng, 5, 300) {
		if !r.Seeded() {
			continue
		}
		a, err := Open(Config{Self: pk(0), Private: privOf(pk(0)), Range: testRange})
		if err != nil {
			t.Fatal(err)
		}
		a.mu.Lock()
		a.ring = r
		a.mu.Unlock()
		got := a.AllPrefixes()
		st := a.Status()
		a.Close()
		owners := r.Owners()
		if len(got) != len(owners) {
			t.Fatalf("round %d: %d owners, want %d", round, len(got), len(owners))
		}
		for p := range owners {
			if want := SpansToPrefixes(r.Spans(p)); !slices.Equal(got[p], want) {
				t.Fatalf("round %d: %s: %v, want %v", round, p.Name(), got[p], want)
			}
		}
		if len(st.Peers) != len(owners) {
			t.Fatalf("round %d: status of %d owners, want %d", round, len(st.Peers), len(owners))
		}
		for _, ps := range st.Peers {
			want := PeerStatus{Peer: ps.Peer, Prefixes: SpansToPrefixes(r.Spans(ps.Peer)), Size: owners[ps.Peer], Free: r.FreeOf(ps.Peer), Reachable: ps.Reachable}
			if ps.Peer == pk(0) {
				want.Free = ps.Free // this peer's own: what it would publish (usedIn)
			}
			if !slices.Equal(ps.Prefixes, want.Prefixes) || ps.Size != want.Size || ps.Free != want.Free {
				t.Fatalf("round %d: status %+v, want %+v", round, ps, want)
			}
		}
	}
}
