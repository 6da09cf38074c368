package main

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/sim"
	"github.com/weavewg/weavewg/types/key"
)

// The joiner's timeline (-timeline): for a timed join, every step of the
// joiner's connection making (each dial, refusal, connection, backoff;
// discovery.Config.Trace), the other peers' steps that concern it (who
// refused it, who shed a connection for it), and, polled every 50 ms,
// how many connections it holds, how many peers it reaches, how many
// reach it and how many hold its current record: a join's wait is a
// chain of timers, and counters summed over the change do not say which.

// timelineOn: -timeline.
var timelineOn bool

type tlEvent struct {
	node int
	ev   discovery.TraceEvent
}

// timeline collects the trace events of every node while a timed join
// runs (the joiner's key is not known before its router starts).
type timeline struct {
	mu     sync.Mutex
	on     bool
	events []tlEvent
}

var tl timeline

func (t *timeline) record(node int, ev discovery.TraceEvent) {
	t.mu.Lock()
	if t.on {
		t.events = append(t.events, tlEvent{node, ev})
	}
	t.mu.Unlock()
}

func (t *timeline) start() {
	t.mu.Lock()
	t.on, t.events = true, nil
	t.mu.Unlock()
}

func (t *timeline) stop() []tlEvent {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.on = false
	ev := t.events
	t.events = nil
	return ev
}

// joinWatch polls the joiner's view and the mesh's view of it.
type joinWatch struct {
	stopc chan struct{}
	done  chan struct{}
	lines []tlLine
}

// tlLine is one line of a timeline, at its time from the Join call.
type tlLine struct {
	at time.Duration
	s  string
}

func watchJoin(c *sim.Cluster, joiner *sim.Node, t0 time.Time) *joinWatch {
	w := &joinWatch{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		last := ""
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			conns, reaches := 0, 0
			for _, r := range joiner.Router.Reachable() {
				reaches++
				if r.Direct {
					conns++
				}
			}
			self, _ := joiner.Router.ReachOf(joiner.Key)
			reached, current, peers := 0, 0, 0
			for _, nd := range c.Alive() {
				if nd == joiner {
					continue
				}
				peers++
				if r, ok := nd.Router.ReachOf(joiner.Key); ok {
					reached++
					if r.Version == self.Version {
						current++
					}
				}
			}
			s := fmt.Sprintf("joiner: %d connections, reaches %d of %d; %d peers reach it, %d of them hold its record v%d", conns, reaches, peers+1, reached, current, self.Version)
			if s != last {
				last = s
				w.lines = append(w.lines, tlLine{time.Since(t0), s})
			}
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *joinWatch) stop() []tlLine {
	close(w.stopc)
	<-w.done
	return w.lines
}

// printTimeline prints the joiner's steps, the others' steps about it and
// the watch's lines in time order.
func printTimeline(n int, name string, c *sim.Cluster, joiner *sim.Node, t0 time.Time, events []tlEvent, watch []tlLine) {
	names := map[key.Public]string{}
	for _, nd := range c.Alive() {
		names[nd.Key] = nd.Name
	}
	who := func(k key.Public) string {
		if k.IsZero() {
			return "?"
		}
		if s, ok := names[k]; ok {
			return s
		}
		return k.Name()
	}
	var lines []tlLine
	for _, e := range events {
		mine := e.node == joiner.Index
		if !mine && e.ev.Peer != joiner.Key && e.ev.Kind != discovery.TraceShed {
			continue
		}
		if !mine && e.ev.Kind == discovery.TracePass {
			continue
		}
		at := e.ev.At.Sub(t0)
		s := fmt.Sprintf("n%d %s %s", e.node, e.ev.Kind, who(e.ev.Peer))
		if e.ev.Detail != "" {
			s += ": " + e.ev.Detail
		}
		lines = append(lines, tlLine{at, s})
	}
	lines = append(lines, watch...)
	slices.SortStableFunc(lines, func(a, b tlLine) int { return cmp.Compare(a.at, b.at) })
	fmt.Fprintf(os.Stderr, "simbench: N=%d %s: timeline of %s (from the Join call):\n", n, name, joiner.Name)
	for _, l := range lines {
		fmt.Fprintf(os.Stderr, "simbench:   %+8.3fs %s\n", l.at.Seconds(), l.s)
	}
}

// healCut is the nodes the partition cut off (-timeline traces the heal).
var healCut map[int]bool

// printHealSummary sums the heal's trace events (-timeline): which dials
// were made and why (a target, a gossip dial under half the limit, a
// bridge), from which side to which, what each connection made was, and
// what was closed: a heal's cost is the connections it makes, each a new
// version of two records flooded through the mesh.
func printHealSummary(n int, c *sim.Cluster, t0 time.Time, events []tlEvent) {
	idx := map[key.Public]int{}
	for _, nd := range c.Alive() {
		idx[nd.Key] = nd.Index
	}
	side := func(i int) string {
		if healCut[i] {
			return "cut"
		}
		return "main"
	}
	peerSide := func(k key.Public) string {
		i, ok := idx[k]
		if !ok {
			return "?"
		}
		return side(i)
	}
	kinds := map[string]int{}
	dials := map[string]int{}
	made := map[string]int{}
	closed := map[string]int{}
	type pair struct {
		node int
		peer key.Public
	}
	why := map[pair]string{}
	reason := func(d string) string {
		if d == "target" {
			return "target"
		}
		var unreach, full, bridging bool
		var degree, failures, holding int
		if _, err := fmt.Sscanf(d, "gossip: unreachable %t, full %t, degree %d, failures %d, bridging %t, holding %d", &unreach, &full, &degree, &failures, &bridging, &holding); err != nil {
			return "gossip"
		}
		if bridging {
			return "bridge"
		}
		return fmt.Sprintf("gossip(unreachable %v, holding %s)", unreach, bucket(holding))
	}
	var firstCross time.Duration = -1
	madeAt := map[string][]time.Duration{}
	for _, e := range events {
		kinds[e.ev.Kind.String()]++
		from, to := side(e.node), peerSide(e.ev.Peer)
		switch e.ev.Kind {
		case discovery.TraceDial:
			r := reason(e.ev.Detail)
			why[pair{e.node, e.ev.Peer}] = r
			dials[fmt.Sprintf("%s→%s %s", from, to, r)]++
		case discovery.TraceEstablished:
			if strings.HasPrefix(e.ev.Detail, "outbound true") {
				r := why[pair{e.node, e.ev.Peer}]
				if r == "" {
					r = "target" // a target's first dial names no peer
				}
				made[fmt.Sprintf("%s→%s %s", from, to, r)]++
				at := e.ev.At.Sub(t0)
				madeAt[r] = append(madeAt[r], at)
				if from != to && firstCross < 0 {
					firstCross = e.ev.At.Sub(t0)
				}
			}
		case discovery.TraceClosed:
			d := e.ev.Detail
			if i := strings.LastIndex(d, ", now "); i >= 0 {
				d = d[:i]
			}
			closed[fmt.Sprintf("%s–%s %s", from, to, d)]++
		}
	}
	show := func(what string, m map[string]int) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
		for _, k := range keys {
			fmt.Fprintf(os.Stderr, "simbench:   N=%d heal %s: %5d %s\n", n, what, m[k], k)
		}
	}
	fmt.Fprintf(os.Stderr, "simbench: N=%d heal: trace of %d events (%d cut off), first connection across at %v\n", n, len(events), len(healCut), firstCross.Round(time.Millisecond))
	show("events", kinds)
	show("dials", dials)
	show("made (outbound end)", made)
	show("closed", closed)
	for r, ats := range madeAt {
		slices.Sort(ats)
		fmt.Fprintf(os.Stderr, "simbench:   N=%d heal made by %s: %d, from %v to %v (median %v)\n", n, r, len(ats), ats[0].Round(time.Millisecond), ats[len(ats)-1].Round(time.Millisecond), ats[len(ats)/2].Round(time.Millisecond))
	}
}

func bucket(h int) string {
	switch {
	case h < 15:
		return "<15"
	case h < 30:
		return "15-29"
	}
	return ">=30"
}

// printPartSizes prints, before the heal (-timeline), how many
// connections the peers of each part hold: a part still refilling after
// the cut makes its connections during the heal instead.
func printPartSizes(n, connLimit int, c *sim.Cluster) {
	if connLimit == 0 {
		connLimit = discovery.DefaultConnLimit
	}
	want := (connLimit + 1) / 2
	for _, part := range []string{"cut", "main"} {
		peers, under, sum, least := 0, 0, 0, connLimit
		for _, nd := range c.Alive() {
			if healCut[nd.Index] != (part == "cut") {
				continue
			}
			d := direct(nd)
			peers++
			sum += d
			least = min(least, d)
			if d < want {
				under++
			}
		}
		fmt.Fprintf(os.Stderr, "simbench: N=%d before the heal: %s part: %d peers, %.1f connections on average, least %d, %d under %d\n", n, part, peers, float64(sum)/float64(max(peers, 1)), least, under, want)
	}
}
