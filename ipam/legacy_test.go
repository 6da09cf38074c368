package ipam

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// v2Body is a ring as version 2 stored it (the golden bytes of that
// version's test, without the message header): 10.32.0.0/12 seeded by A,
// 10.40.0.0/13 granted to B, B removed by A (done), A's vote.
func v2Body(t *testing.T) []byte {
	k := func(i int) string { p := pk(i); return hex.EncodeToString(p[:]) }
	b, err := hex.DecodeString(strings.ReplaceAll(strings.Join([]string{
		"0a200000 0c", k(0), "0102030405060708", "00",
		"0002", k(0), k(1),
		"0002", "0a200000 0000 00000001 00100000", "0a280000 0001 00000001 00000000",
		"0001", "0001 0000 01",
		"0001", "0000 0001 00000001 0000",
	}, ""), " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOpenConvertsVersion2Ring: an upgraded peer opens the ipam.db of
// version 2 instead of setting it aside. B's space went to A by a
// completed rmpeer, so both entries are A's; A signs them with a new
// version, and another upgraded peer (C, its own file converted the same
// way) takes A's signed states.
func TestOpenConvertsVersion2Ring(t *testing.T) {
	dir := t.TempDir()
	open := func(i int) *Allocator {
		t.Helper()
		path := filepath.Join(dir, pk(i).Name()+".db")
		cfg := Config{Self: pk(i), Private: privOf(pk(i)), Range: testRange, Path: path, NoSync: true}
		a, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		st, err := openBolt(path, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.saveRing(v2Body(t)); err != nil {
			t.Fatal(err)
		}
		st.close()
		if a, err = Open(cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	a, c := open(0), open(2)
	for _, x := range []*Allocator{a, c} {
		st := x.Status()
		if st.Counters["ipam_ring_converted"] != 1 || st.Counters["ipam_state_set_aside"] != 0 {
			t.Fatalf("%s: counters %v", x.self.Name(), st.Counters)
		}
		if got := fmtPrefixes(x.Prefixes(pk(0))); got != "[10.32.0.0/12]" {
			t.Errorf("%s: A's prefixes %s, want the whole range (B's went to A)", x.self.Name(), got)
		}
		if r := x.View().Ring; len(r.Transfers) != 0 || len(r.Votes) != 0 {
			t.Errorf("%s kept transfers or votes: %+v %+v", x.self.Name(), r.Transfers, r.Votes)
		}
	}
	ra := a.View().Ring
	var v verifier
	for _, e := range ra.Entries {
		if e.Version < 2 || e.Writer != pk(0) || !v.entry(ra, &e) {
			t.Errorf("A's entry %v: version %d, writer %s, signature ok %v", u2a(e.Token), e.Version, e.Writer.Name(), v.entry(ra, &e))
		}
	}
	if err := c.HandleMessage(pk(0), a.RingMessage()); err != nil {
		t.Fatal(err)
	}
	if rc := c.View().Ring; !entriesEqual(rc, ra) {
		t.Errorf("C did not take A's signed entries: %+v", rc.Entries)
	}
	if n := c.Status().Counters["ipam_entry_unauthorized"] + c.Status().Counters["ipam_forged_entry"]; n != 0 {
		t.Errorf("C refused %d of A's entries", n)
	}
	// Reopened, the ring is version 3: no second conversion.
	a.Close()
	a2, err := Open(Config{Self: pk(0), Private: privOf(pk(0)), Range: testRange, Path: filepath.Join(dir, pk(0).Name()+".db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if a2.Status().Counters["ipam_ring_converted"] != 0 || !entriesEqual(a2.View().Ring, ra) {
		t.Error("the converted ring did not persist")
	}
	if _, err := Open(Config{Self: pk(0), Private: privOf(pk(0)), Range: netip.MustParsePrefix("10.32.0.0/12"), store: &memStore{ring: v2Body(t)[:40]}}); err == nil {
		t.Error("a truncated version-2 ring opened")
	}
}

func entriesEqual(a, b *Ring) bool {
	if len(a.Entries) != len(b.Entries) {
		return false
	}
	for i := range a.Entries {
		if a.Entries[i] != b.Entries[i] {
			return false
		}
	}
	return true
}

// TestOtherVersionCounted: a version-2 ring message (a peer not upgraded
// yet) is refused as malformed and counted as another version.
func TestOtherVersionCounted(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openTest(t, n, pk(0), "")
	msg := append([]byte{2, msgRing}, v2Body(t)...)
	for range 2 {
		if err := a.HandleMessage(pk(1), msg); !errors.Is(err, ErrMalformed) {
			t.Fatalf("err = %v", err)
		}
	}
	if c := a.Status().Counters; c["ipam_message_other_version"] != 2 || c["ipam_message_malformed"] != 2 {
		t.Fatalf("counters %v", c)
	}
}
