package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/sim"
)

// Scheduling latency: how long runnable goroutines waited for a CPU
// (runtime/metrics /sched/latencies:seconds), between two reads. A
// handshake is five or so wake-ups of two goroutines; when the process
// is given less CPU than its N peers ask for, every wake-up waits behind
// the whole run queue, and handshakes (and keepalives) pass their limits
// though no peer is slow. The build's progress lines print it, so a run
// shows whether its timeouts were the simulator's own queue.
type schedWatch struct {
	mu   sync.Mutex
	last *metrics.Float64Histogram
	cpu  time.Duration
	at   time.Time
}

const schedMetric = "/sched/latencies:seconds"

func newSchedWatch() *schedWatch {
	w := &schedWatch{}
	w.last, w.cpu, w.at = readSched(), cpuTime(), time.Now()
	return w
}

func readSched() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: schedMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s[0].Value.Float64Histogram()
}

// since says, for the time since the last call: the process's CPU as a
// share of one core, and the median, 99th percentile and largest wait of
// a runnable goroutine for a CPU.
func (w *schedWatch) since() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	now, cpu, h := time.Now(), cpuTime(), readSched()
	share := float64(cpu-w.cpu) / float64(now.Sub(w.at))
	prev := w.last
	w.last, w.cpu, w.at = h, cpu, now
	if h == nil || prev == nil || len(h.Counts) != len(prev.Counts) {
		return fmt.Sprintf("process at %.2f of a core", share)
	}
	counts := make([]uint64, len(h.Counts))
	var total uint64
	for i := range h.Counts {
		counts[i] = h.Counts[i] - prev.Counts[i]
		total += counts[i]
	}
	if total == 0 {
		return fmt.Sprintf("process at %.2f of a core", share)
	}
	q := func(p float64) float64 {
		want := uint64(math.Ceil(p * float64(total)))
		var run uint64
		for i, c := range counts {
			run += c
			if run >= want {
				return h.Buckets[i+1] // the bucket's upper bound
			}
		}
		return h.Buckets[len(h.Buckets)-1]
	}
	maxWait := 0.0
	for i := len(counts) - 1; i >= 0; i-- {
		if counts[i] > 0 {
			maxWait = h.Buckets[i+1]
			break
		}
	}
	return fmt.Sprintf("process at %.2f of a core; goroutines waited for a CPU: median %s, p99 %s, max %s",
		share, fmtWait(q(0.5)), fmtWait(q(0.99)), fmtWait(maxWait))
}

func fmtWait(s float64) string {
	if math.IsInf(s, 1) {
		return "longer"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}

// idleWindow is how long the built mesh is watched while nothing changes
// (-idle): 10 s holds one anti-entropy round of each router, and a
// profile of it at N=100 routers alone had 5 samples; a longer window
// gives the profile something to show.
var idleWindow = 10 * time.Second

// idle is what the simulated peers do while nothing changes, per peer
// and second: the cost that must not grow with N (issue 18), however
// many peers share the process.
type idle struct {
	CPUMicros float64 `json:"cpu_us_per_peer_per_second"`
	Frames    float64 `json:"frames_per_peer_per_second"`
	// ChannelFrames is the part of Frames that was channel messages
	// (IPAM's and DNS's rounds; gossip_channel_sent).
	ChannelFrames float64 `json:"channel_frames_per_peer_per_second"`
	Goroutines    float64 `json:"goroutines_per_peer"`
	Changed       bool    `json:"changed,omitempty"` // a record was applied or a connection made or lost in the window
}

func (i idle) String() string {
	s := fmt.Sprintf("%.1f µs of CPU and %.2f frames per peer per second (%.2f of them channel messages); %.1f goroutines per peer", i.CPUMicros, i.Frames, i.ChannelFrames, i.Goroutines)
	if i.Changed {
		s += " (the mesh was not still: records applied or connections moved meanwhile)"
	}
	return s
}

// idleProfile, if set, is where measureIdle writes a CPU profile of its
// window (-idleprofile).
var idleProfile string

// measureIdle watches c for window and reports its background per peer.
func measureIdle(c *sim.Cluster, window time.Duration) idle {
	if idleProfile != "" {
		if f, err := os.Create(idleProfile); err != nil {
			fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
			f.Close()
		} else {
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
	}
	events := func() uint64 {
		return c.RouterCounter(discovery.CtrRecordsApplied, discovery.CtrEstablished, discovery.CtrConnClosed)
	}
	var ctr0 map[string]uint64
	if printCounters {
		ctr0 = c.Counters()
	}
	peers := float64(len(c.Alive()))
	e0, cpu0 := events(), cpuTime()
	m0, _ := c.Traffic()
	ch0 := c.RouterCounter(discovery.CtrChannelSent)
	t0 := time.Now()
	time.Sleep(window)
	e1, cpu1 := events(), cpuTime()
	m1, _ := c.Traffic()
	ch1 := c.RouterCounter(discovery.CtrChannelSent)
	secs := time.Since(t0).Seconds()
	if printCounters {
		// What the still mesh did: handshakes, rounds, channel messages.
		counterDelta(int(peers), "idle", ctr0, c.Counters())
	}
	per := func(v float64) float64 { return v / peers / secs }
	return idle{
		CPUMicros:     per(float64((cpu1 - cpu0).Microseconds())),
		Frames:        per(float64(m1 - m0)),
		ChannelFrames: per(float64(ch1 - ch0)),
		Goroutines:    float64(runtime.NumGoroutine()) / peers,
		Changed:       e1 != e0,
	}
}
