package ipam

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/weavewg/weavewg/types/key"
)

// corruptions damage a good state file in ways seen in the field: torn
// writes, a file of zeros, random garbage over the pages, a stored ring that
// no longer parses.
var corruptions = []struct {
	name string
	hurt func(t *testing.T, path string)
}{
	{"garbage", func(t *testing.T, path string) {
		writeFile(t, path, []byte(strings.Repeat("not a bbolt file ", 1000)))
	}},
	{"zeros", func(t *testing.T, path string) {
		writeFile(t, path, make([]byte, 32768))
	}},
	{"pages overwritten", func(t *testing.T, path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i := 4096 * 2; i < len(b); i += 7 {
			b[i] ^= 0x5a
		}
		writeFile(t, path, b)
	}},
	{"truncated", func(t *testing.T, path string) {
		if err := os.Truncate(path, 5000); err != nil {
			t.Fatal(err)
		}
	}},
	{"bad ring", func(t *testing.T, path string) {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketRing).Put(keyState, []byte{1, 2, 3})
		}); err != nil {
			t.Fatal(err)
		}
	}},
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptStateRecoversFromGossip is issue 14 acceptance 5 at the
// allocator: a joiner whose ipam.db is damaged opens anyway (the file moved
// aside, counted), holds its containers' addresses while the ring is
// unknown, and gets the same ring back from its peer with those addresses
// still its own.
func TestCorruptStateRecoversFromGossip(t *testing.T) {
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			n := &loopNet{peers: map[key.Public]*Allocator{}}
			a := openTest(t, n, pk(0), filepath.Join(dir, "a.db"))
			bPath := filepath.Join(dir, "b.db")
			b := openTest(t, n, pk(1), bPath)
			if err := a.Seed(); err != nil {
				t.Fatal(err)
			}
			a.SetPeers([]key.Public{pk(1)})
			b.SetPeers([]key.Public{pk(0)})
			b.WantSpace()
			n.run(t)
			addr, err := b.Allocate("c1")
			if err != nil {
				t.Fatal(err)
			}
			n.run(t)
			ringBefore := a.View().Ring
			b.Close()
			delete(n.peers, pk(1))

			c.hurt(t, bPath)
			b = openTest(t, n, pk(1), bPath)
			if st := b.Status(); !st.Seed.IsZero() {
				t.Fatalf("ring survived the damage: %v", st.Seed)
			}
			if b.Status().Counters["ipam_state_set_aside"] != 1 {
				t.Errorf("set-aside not counted: %v", b.Status().Counters)
			}
			matches, _ := filepath.Glob(bPath + ".corrupt-*")
			if len(matches) != 1 {
				t.Errorf("damaged file not kept aside: %v", matches)
			}
			// The container's address is held while the ring is unknown.
			if err := b.ClaimAfterRestart(addr, "c1"); err != nil {
				t.Fatal(err)
			}
			b.SetPeers([]key.Public{pk(0)})
			a.Gossip()
			n.run(t)
			if !b.View().Ring.Equal(a.View().Ring) || a.View().Ring.Seed != ringBefore.Seed {
				t.Fatal("b did not get the same ring back")
			}
			if owner, _ := b.View().Ring.Owner(addr); owner != pk(1) {
				t.Fatalf("%v now owned by %s", addr, owner.Name())
			}
			for range 20 {
				got, err := b.Allocate("new")
				if err != nil {
					break
				}
				if got == addr {
					t.Fatalf("the container's address %v handed out again", addr)
				}
			}
			if len(b.Conflicts()) != 0 {
				t.Errorf("conflicts %v", b.Conflicts())
			}
			// And the claim is on disk now: it survives another restart.
			b.Close()
			delete(n.peers, pk(1))
			b = openTest(t, n, pk(1), bPath)
			found := false
			for _, al := range b.Allocations() {
				found = found || (al.Addr == addr && al.ID == "c1")
			}
			if !found {
				t.Errorf("claim not persisted: %v", b.Allocations())
			}
		})
	}
}

// A file another process holds is not corrupt: Open fails and leaves it.
func TestLockedStateIsNotSetAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := openChecked(path, true)
	if err == nil {
		st.close()
		t.Fatal("opened a file another holder has locked")
	}
	if errors.Is(err, ErrCorrupt) {
		t.Fatalf("a locked file called corrupt: %v", err)
	}
}

// A ring with an entry version near 2^32 (which would make its owner's
// every later change lose, or wrap) is refused whole and counted; the
// receiver's ring and the owner's space are unchanged.
func TestFarFutureVersionRefused(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a := openTest(t, n, pk(0), "")
	b := openTest(t, n, pk(1), "")
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	a.SetPeers([]key.Public{pk(1)})
	b.SetPeers([]key.Public{pk(0)})
	b.WantSpace()
	n.run(t)
	before := b.View().Ring
	forged := before.Clone()
	for i := range forged.Entries {
		if forged.Entries[i].Owner == pk(0) {
			forged.Entries[i].Owner, forged.Entries[i].Version = pk(2), 1<<32-1
		}
	}
	msg, err := AppendRingMessage(nil, forged)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.HandleMessage(pk(2), msg); !errors.Is(err, ErrVersionTooHigh) {
		t.Fatalf("forged ring: %v", err)
	}
	if !b.View().Ring.Equal(before) {
		t.Error("b's ring changed")
	}
	if b.Status().Counters["ipam_ring_refused_versions"] != 1 {
		t.Errorf("not counted: %v", b.Status().Counters)
	}
}
