package main

import (
	"cmp"
	"fmt"
	"os"
	"slices"
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
