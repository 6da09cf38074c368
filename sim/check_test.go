package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// checkFull is Check as it was before it went by stages and kept hashes
// between calls: every member's sorted versions, whole ring and every
// node's name, each time. Check must agree with it.
func checkFull(c *Cluster) error {
	byGroup, all := c.aliveByGroup()
	for g, members := range byGroup {
		in := map[key.Public]bool{}
		for _, m := range members {
			in[m.Key] = true
			if !m.Addr().IsValid() {
				return fmt.Errorf("group %d: %s has no address", g, m.Name)
			}
		}
		var refTopo, refRing []byte
		for i, nd := range members {
			type kv struct {
				k key.Public
				v uint64
			}
			var seen []kv
			for _, p := range nd.Router.Reachable() {
				if !in[p.Key] {
					return fmt.Errorf("%s reaches outside its group", nd.Name)
				}
				seen = append(seen, kv{p.Key, p.Version})
			}
			if len(seen) != len(members) {
				return fmt.Errorf("%s reaches %d of %d", nd.Name, len(seen), len(members))
			}
			slices.SortFunc(seen, func(a, b kv) int { return bytes.Compare(a.k[:], b.k[:]) })
			h := sha256.New()
			for _, e := range seen {
				h.Write(e.k[:])
				binary.Write(h, binary.BigEndian, e.v)
			}
			topo, ring := h.Sum(nil), nd.IPAM.RingMessage()
			if i == 0 {
				refTopo, refRing = topo, ring
			} else if !bytes.Equal(topo, refTopo) || !bytes.Equal(ring, refRing) {
				return fmt.Errorf("%s disagrees with %s", nd.Name, members[0].Name)
			}
			for _, o := range all {
				if o == nil {
					continue
				}
				got, err := nd.DNS.Lookup(o.Name)
				if err != nil {
					return err
				}
				if in[o.Key] && (len(got) != 1 || got[0] != o.Addr()) || !in[o.Key] && len(got) != 0 {
					return fmt.Errorf("%s resolves %s to %v", nd.Name, o.Name, got)
				}
			}
		}
	}
	return nil
}

// TestCheckMatchesFull compares Check, which keeps a member's ring hash
// and passed names between calls, with the full computation at each
// step: agreement, a name changed at one peer (its table changes at once:
// a kept result must not hide it), the name withdrawn, a cut and a heal.
func TestCheckMatchesFull(t *testing.T) {
	c := agreed(t, Config{Seed: 5}, 5)
	// The two checks read the peers one after the other while messages
	// may still be on their way (the withdrawn name's first broadcast can
	// reach a peer just after Check read it): a kept result that hides a
	// change disagrees for good, a message in flight only for a moment.
	same := func(what string) {
		t.Helper()
		var a, b error
		for range 40 {
			if a, b = c.Check(), checkFull(c); (a == nil) == (b == nil) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s: for 2 s Check says %v, the full check %v", what, a, b)
	}
	same("agreed")
	same("agreed, again (kept hashes)")
	live := c.Alive()
	x, other := live[1], live[2]
	bogus := netip.MustParseAddr("10.47.255.1")
	if err := x.DNS.AddEntry(other.Name, bogus, "bogus"); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(); err == nil {
		t.Fatalf("Check passed with %s answering %s twice", x.Name, other.Name)
	}
	same("a second address for one name")
	if _, err := x.DNS.RemoveEntries(other.Name, bogus, "bogus"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(time.Now(), convergeTimeout); err != nil {
		t.Fatal(err)
	}
	same("the name withdrawn")
	c.Net.SetGroups(map[netip.Addr]int{live[0].IP: 1})
	deadline := time.Now().Add(convergeTimeout)
	for reaches(live[1], live[0]) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still reaches %s after the cut", live[1].Name, live[0].Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Check(); err == nil {
		t.Fatal("Check passed with one peer cut off")
	}
	c.Net.SetGroups(map[netip.Addr]int{live[0].IP: 0})
	if _, err := c.WaitConverged(time.Now(), convergeTimeout); err != nil {
		t.Fatal(err)
	}
	same("healed")
}
