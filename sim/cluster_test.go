package sim

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/discovery"
)

// convergeTimeout bounds every wait for agreement. Convergence normally
// takes seconds; the bound is for a loaded machine (the race detector, the
// shared CI cores), and a miss fails with the first disagreement named.
const convergeTimeout = 2 * time.Minute

// TestRandomChurn is issue 18's acceptance 4: 20 peers, then joins,
// leaves, partitions and heals in a random (seeded) sequence, with no pause
// for agreement between steps; once everything is healed, every live peer
// agrees on the topology, the IPAM ring and the DNS names (Cluster.Check).
// With --conn-limit 8 the mesh is not a full one: records and channel
// messages cross several hops, each peer joins through one random peer
// (often a full one, which refers it to the mesh), and the two sides of a
// partition find each other again when it heals (bridges; connlimit.go).
func TestRandomChurn(t *testing.T) {
	const (
		seed    = 18
		limit   = 8
		start   = 20 / churnScale // peers before the churn
		total   = 26 / churnScale // peers that ever join
		steps   = 12
		minLive = 14 / churnScale
	)
	c := agreed(t, Config{Seed: seed, ConnLimit: limit}, start)
	rng := rand.New(rand.NewPCG(seed, 4))
	var script []string
	joined := start
	for step := range steps {
		live := c.Alive()
		switch op := rng.IntN(4); {
		case op == 0 && joined < total:
			nd, err := c.Join()
			if err != nil {
				t.Fatal(err)
			}
			joined++
			script = append(script, "join "+nd.Name)
		case op == 1 && len(live) > minLive:
			nd := live[rng.IntN(len(live))]
			c.Leave(nd.Index)
			script = append(script, "leave "+nd.Name)
		case op == 2:
			groups := map[int]int{}
			var side []string
			for _, nd := range live {
				g := rng.IntN(2)
				groups[nd.Index] = g
				if g == 1 {
					side = append(side, nd.Name)
				}
			}
			c.Partition(groups)
			script = append(script, fmt.Sprintf("partition {%s} off", strings.Join(side, " ")))
		default:
			c.Heal()
			script = append(script, "heal")
		}
		// Some steps land while the last one is still spreading.
		time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
		t.Logf("step %d: %s", step, script[len(script)-1])
	}
	c.Heal()
	d, err := c.WaitConverged(time.Now(), convergeTimeout)
	if err != nil {
		t.Fatalf("after %s; heal: %v", strings.Join(script, "; "), err)
	}
	t.Logf("%d live peers agree %v after the final heal", len(c.Alive()), d.Round(time.Millisecond))
	multiHop := false
	for _, nd := range c.Alive() {
		direct := 0
		for _, p := range nd.Router.Peers() {
			if p.Direct {
				direct++
			}
			if p.Reachable && !p.Self && !p.Direct {
				multiHop = true
			}
		}
		// The one target a peer was given may go past the limit.
		if direct > limit+1 {
			t.Errorf("%s holds %d control connections, limit %d", nd.Name, direct, limit)
		}
	}
	if !multiHop {
		t.Error("every peer is a direct neighbour of every other: the limit did not bind")
	}
}

// agreed is a cluster of n peers that joined and agree (Check), closed
// when the test ends.
func agreed(t *testing.T, cfg Config, n int) *Cluster {
	t.Helper()
	c := New(cfg)
	t.Cleanup(c.Close)
	for range n {
		if _, err := c.Join(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WaitConverged(time.Now(), convergeTimeout); err != nil {
		t.Fatalf("%d peers joined, then: %v", n, err)
	}
	return c
}

// TestCheckSeesDisagreement makes sure the agreement check can fail: a
// partitioned peer does not reach the other side, and a name added on one
// side does not resolve on the other until the heal.
func TestCheckSeesDisagreement(t *testing.T) {
	c := agreed(t, Config{Seed: 2}, 4)
	live := c.Alive()
	// Tell Check nothing: cut the network under it, as a failed link would.
	c.Net.SetGroups(map[netip.Addr]int{live[0].IP: 1})
	deadline := time.Now().Add(convergeTimeout)
	for reaches(live[1], live[0]) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still reaches %s after the cut", live[1].Name, live[0].Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Check(); err == nil {
		t.Fatal("Check passed with one peer cut off from the others")
	} else {
		t.Logf("with %s cut off: %v", live[0].Name, err)
	}
	c.Net.SetGroups(map[netip.Addr]int{live[0].IP: 0})
	if _, err := c.WaitConverged(time.Now(), convergeTimeout); err != nil {
		t.Fatalf("after the link came back: %v", err)
	}
}

func reaches(from, to *Node) bool {
	for _, p := range from.Router.Peers() {
		if p.Key == to.Key {
			return p.Reachable
		}
	}
	return false
}

// RouterCounter, which the bench polls while a mesh settles, sums what
// RouterCounters does (read between two equal reads of RouterCounters:
// the mesh may still be moving).
func TestRouterCounterSumsRouterCounters(t *testing.T) {
	c := agreed(t, Config{Seed: 3, RoutersOnly: true}, 4)
	names := []string{discovery.CtrEstablished, discovery.CtrRecordsApplied}
	for range 100 {
		before := c.RouterCounters()
		one, both := c.RouterCounter(names[0]), c.RouterCounter(names...)
		after := c.RouterCounters()
		if before[names[0]] != after[names[0]] || before[names[1]] != after[names[1]] {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if one != after[names[0]] || one == 0 || both != after[names[0]]+after[names[1]] {
			t.Fatalf("RouterCounter: %d and %d, RouterCounters: %d and %d", one, both, after[names[0]], after[names[0]]+after[names[1]])
		}
		return
	}
	t.Fatal("the counters never held still")
}
