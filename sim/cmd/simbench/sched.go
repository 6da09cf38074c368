package main

import (
	"fmt"
	"math"
	"runtime/metrics"
	"sync"
	"time"
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
