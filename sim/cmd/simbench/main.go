// Command simbench is the simulation half of `make bench-scale` (issue 18):
// N peers' control planes (discovery, ipam, dns; package sim) in one
// process over an in-memory network, at N = 100, 300 and 1,000 by default.
// For each N it builds a mesh of N-1 peers, joining them -batch at a time
// and waiting for agreement after each batch (untimed: the build), then
// times convergence, of the topology alone (every peer reaches every other
// and holds the same record versions: sim.Cluster.CheckTopology) and of
// everything (topology, IPAM ring and DNS names: sim.Cluster.Check),
//
//   - after the N-th peer joins (the last join; issue 18's 10 s),
//   - after one more peer joins,
//   - after one peer leaves,
//   - after a partition that cut a tenth of the peers off heals,
//
// and, with -burst, in a mesh of its own, after N peers launched together
// (one after another with no wait: the harshest start, every peer joining
// while the others still do),
//
// and counts the control frames and bytes all peers sent from the change
// until convergence: in total, per peer, and as a multiple of N (a change
// that costs O(N) messages keeps that multiple flat as N grows). Signature
// checks are counted as each peer's host would do them (package sim's doc
// says how the simulator shares them); their CPU per peer is that count
// times one verification measured in the same run.
//
// With -timeline it prints, for each timed join, the joiner's steps
// (each dial, refusal, connection, backoff, and the other peers' steps
// about it, such as a connection shed for it) and, every 50 ms, how many
// peers reach it and hold its record: the chain a slow join waited on
// (timeline.go); for the heal, how many connections each part's peers
// held before it, and every dial and connection the heal made, by reason
// (a target, a gossip dial under half the limit, a bridge) and by side
// (printHealSummary: a heal's cost is the connections it makes, each a
// new version of two records). The built mesh's line says how full it
// is and how long its paths are.
//
// A benchmark, not a test: it prints the figures beside the target
// (10 s after the last join at N = 1,000) and fails only if it could not
// measure or a run did not converge within -timeout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/sim"
	"github.com/weavewg/weavewg/types/key"
)

// target is acceptance 1 of issue 18: convergence within 10 s of the last
// join at N = 1,000.
const target = 10 * time.Second

type change struct {
	Name          string  `json:"change"`
	TopoSeconds   float64 `json:"topology_seconds"`
	TopoFailed    bool    `json:"topology_failed,omitempty"` // the topology did not converge: TopoSeconds is the time given up after
	Seconds       float64 `json:"seconds"`
	Msgs          uint64  `json:"frames_total"`
	Bytes         uint64  `json:"bytes_total"`
	MsgsPerPeer   float64 `json:"frames_per_peer"`
	BytesPerPeer  float64 `json:"bytes_per_peer"`
	MsgsOverN     float64 `json:"frames_over_n"`
	VerifyPerPeer float64 `json:"verifies_per_peer"`
	// Until agreement, what the frames were (frames.go): channel
	// messages (IPAM and DNS, relays' copies included) and the still
	// mesh's background for as long as the change took; the rest is
	// the change's own gossip (records, haves, wants, digests).
	ChannelMsgsOverN           float64 `json:"channel_frames_over_n"`
	BackgroundMsgsOverN        float64 `json:"background_frames_over_n"`
	BackgroundChannelMsgsOverN float64 `json:"background_channel_frames_over_n"`
	// CPUSeconds is the CPU the whole process (every simulated peer and
	// the harness) used from the change until agreement: what the
	// change cost the machine, whatever its load.
	CPUSeconds float64 `json:"cpu_seconds"`
	// SettleCPUSeconds is the process's CPU from the change until the
	// mesh settled: the change's whole CPU, the moves after agreement
	// included (CPUSeconds stops at agreement, which at small N comes
	// before most of the work).
	SettleCPUSeconds float64 `json:"settled_cpu_seconds"`
	// Until the mesh settled: the change's whole cost, the moves it set
	// off after agreement included (a joiner dials until it has half its
	// limit, each dial a new version of two records). Settled: no record
	// applied and no connection made or lost anywhere for settleQuiet;
	// the traffic counted is the traffic until the last such event.
	SettleSeconds       float64 `json:"settled_seconds"`
	SettleFailed        bool    `json:"settle_failed,omitempty"` // still moving after -timeout
	SettleMsgsOverN     float64 `json:"settled_frames_over_n"`
	SettleBytesPerPeer  float64 `json:"settled_bytes_per_peer"`
	IdleMsgsPerPeerPerS float64 `json:"idle_frames_per_peer_per_second"` // in the quiet window: anti-entropy's background
	Err                 string  `json:"error,omitempty"`
}

type result struct {
	N            int     `json:"n"`
	BuildSeconds float64 `json:"build_seconds"` // joining the first N-1, batch by batch, with the waits
	// HandshakeSeconds is the routers' handshake timeout (handshakeFor).
	HandshakeSeconds float64 `json:"handshake_timeout_seconds"`
	// Idle is the built mesh's background, measured before the N-th
	// join (zero if the build failed).
	Idle    idle     `json:"idle"`
	Changes []change `json:"changes"`
}

// firstFailed reports whether the mesh of N did not form: the build did
// not agree, or the N-th join did not even converge on the topology. The
// later changes would start from a mesh that never formed, and a larger N
// would only fail slower, so the run stops. (An N-th join whose topology
// converged but IPAM or DNS did not goes on, for the discovery figures:
// see the topo s column; so does a failed -burst row, which has a mesh of
// its own.)
func (r result) firstFailed() bool {
	for _, c := range r.Changes {
		if (c.Name == "building" || c.Name == "N-th joins") && c.TopoFailed {
			return true
		}
	}
	return false
}

func main() {
	ns := flag.String("n", "100,300,1000", "comma-separated mesh sizes")
	timeout := flag.Duration("timeout", 120*time.Second, "give up on a convergence after this long")
	connLimit := flag.Int("conn-limit", 0, "each router's --conn-limit (0: the default)")
	seed := flag.Uint64("seed", 1, "seed of the random choices")
	asJSON := flag.Bool("json", false, "print the results as JSON")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&idleProfile, "idleprofile", "", "write a CPU profile of each built mesh's idle window to this file (the last N's is kept; not with -cpuprofile)")
	flag.DurationVar(&idleWindow, "idle", idleWindow, "how long to watch each built mesh with nothing changing (its background per peer)")
	flag.StringVar(&memProfile, "memprofile", "", "write a heap profile to this file when each mesh is built, or its build failed (the last N's is kept)")
	flag.StringVar(&mutexProfile, "mutexprofile", "", "write a profile of lock waits (sync.Mutex contention, every wait sampled) to this file when each mesh is built, or its build failed (the last N's is kept)")
	flag.BoolVar(&timelineOn, "timeline", false, "print each timed join's timeline: the joiner's dials, refusals, connections and backoffs, and how many peers reach it and hold its record, polled every 50 ms; and the heal's dials and connections by reason and side")
	showCounters := flag.Bool("counters", false, "print, after each change, the counters (drops, refusals) that moved, summed over the peers")
	batch := flag.Int("batch", 50, "while building the mesh of N-1, join this many peers at once, then wait for agreement")
	topoOnly := flag.Bool("routers-only", false, "run each peer's router alone, with no IPAM and no DNS, and check only the topology (discovery's own figures; not issue 18's measure)")
	gogc := flag.Int("gogc", 200, "the Go collector's GOGC for the run: N peers' state is one heap here, where N hosts would each collect their own small one; 100 spent about a sixth of the N=300 build's CPU collecting")
	burst := flag.Bool("burst", false, "also time N peers launched together, in a mesh of their own (slow at N >= 100 on a loaded machine)")
	flag.Parse()
	if *cpuProfile != "" && idleProfile != "" {
		fmt.Fprintf(os.Stderr, "simbench: -cpuprofile and -idleprofile: one CPU profile at a time\n")
		os.Exit(2)
	}
	debug.SetGCPercent(*gogc)
	if mutexProfile != "" {
		runtime.SetMutexProfileFraction(1)
	}
	printCounters = *showCounters
	topologyOnly = *topoOnly
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
			os.Exit(2)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	// A long run stopped with Ctrl-C or kill keeps its profiles: the
	// build of a large N is where the time goes, and it may never end.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-stop
		fmt.Fprintf(os.Stderr, "simbench: %v: writing the profiles asked for and stopping\n", sig)
		pprof.StopCPUProfile()
		writeHeap()
		writeMutex()
		os.Exit(1)
	}()
	var sizes []int
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 10 {
			fmt.Fprintf(os.Stderr, "simbench: bad size %q (at least 10)\n", s)
			os.Exit(2)
		}
		sizes = append(sizes, n)
	}
	loadStart = loadavg()
	verifyCost := measureVerify()
	var results []result
	failed := false
	for _, n := range sizes {
		fmt.Fprintf(os.Stderr, "simbench: N=%d ...\n", n)
		r := run(n, *seed, *connLimit, *batch, *burst, *timeout)
		for _, c := range r.Changes {
			if c.Err != "" {
				failed = true
			}
		}
		results = append(results, r)
		if r.firstFailed() {
			last := r.Changes[len(r.Changes)-1]
			fmt.Fprintf(os.Stderr, "simbench: stopping: N=%d: the mesh did not form (%s: %s); later changes and larger sizes not run\n", n, last.Name, last.Err)
			break
		}
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(map[string]any{
			"verify_seconds": verifyCost.Seconds(),
			"target_seconds": target.Seconds(),
			"load_start":     loadStart,
			"load_end":       loadavg(),
			"results":        results,
		})
	} else {
		print(results, verifyCost)
	}
	if failed {
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// loadStart is the machine's load average when the run began.
var loadStart string

// loadavg returns /proc/loadavg's three load averages ("?" elsewhere):
// the simulation shares the machine, and its timings depend on it.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// memProfile: -memprofile.
var memProfile string

// writeHeap writes a heap profile to -memprofile, if given.
func writeHeap() {
	if memProfile == "" {
		return
	}
	f, err := os.Create(memProfile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
		return
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
	}
}

// mutexProfile: -mutexprofile.
var mutexProfile string

// writeMutex writes the lock waits so far to -mutexprofile, if given.
func writeMutex() {
	if mutexProfile == "" {
		return
	}
	f, err := os.Create(mutexProfile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("mutex").WriteTo(f, 0); err != nil {
		fmt.Fprintf(os.Stderr, "simbench: %v\n", err)
	}
}

// printCounters: -counters.
var printCounters bool

// topologyOnly: -routers-only.
var topologyOnly bool

// agreed is the check a build or a change waits for: everything, or the
// topology alone with -routers-only.
func agreed(c *sim.Cluster) func() error {
	if topologyOnly {
		return c.CheckTopology
	}
	return c.Check
}

// counterDelta prints the counters that moved between before and after.
func counterDelta(n int, name string, before, after map[string]uint64) {
	keys := make([]string, 0, len(after))
	for k, v := range after {
		if v != before[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(os.Stderr, "simbench:   N=%d %s: %s +%d\n", n, name, k, after[k]-before[k])
	}
}

// measureVerify times one signature check on this machine now.
func measureVerify() time.Duration {
	priv, _ := key.NewPrivate()
	msg := make([]byte, 200)
	sig := key.Sign(priv, "simbench", msg)
	const rounds = 200
	start := time.Now()
	for range rounds {
		key.Verify(priv.Public(), "simbench", msg, &sig)
	}
	return time.Since(start) / rounds
}

// nextBatch is the build's backoff: a batch that took over a quarter of
// the timeout to agree halves the next (down to minBatch): joins crowded
// onto a starved process time out and are tried again, which starves it
// further; one that agreed within a twentieth doubles it back, up to
// -batch.
func nextBatch(size, most int, took, timeout time.Duration) int {
	switch {
	case took > timeout/4:
		return max(min(size, most)/2, min(minBatch, most))
	case took < timeout/20:
		return min(size*2, most)
	}
	return size
}

// minBatch is the smallest batch the backoff goes down to.
const minBatch = 10

// handshakeFor is the routers' handshake timeout for a simulation of n
// peers: the daemon's 5 s per 100 peers. A host has its cores to itself;
// here n peers share the process's, and a build's handshakes wait behind
// every other peer's work (at N=1,000 and 5 s, half the failed
// handshakes timed out, and each was tried again).
func handshakeFor(n int) time.Duration {
	return 5 * time.Second * time.Duration(max(1, (n+99)/100))
}

// readFor is the routers' read timeout for a simulation of n peers, for
// handshakeFor's reason: the daemon's 95 s per 100 peers (at N=1,000
// and 95 s the build's connections fell silent past it by thousands).
func readFor(n int) time.Duration {
	return 95 * time.Second * time.Duration(max(1, (n+99)/100))
}

// simConfig is the cluster of a run of n peers.
func simConfig(n int, seed uint64, connLimit int) sim.Config {
	cfg := sim.Config{Seed: seed, ConnLimit: connLimit, RoutersOnly: topologyOnly, HandshakeTimeout: handshakeFor(n), ReadTimeout: readFor(n)}
	if timelineOn {
		cfg.Trace = tl.record
	}
	return cfg
}

func run(n int, seed uint64, connLimit, batch int, burst bool, timeout time.Duration) result {
	res := result{N: n, HandshakeSeconds: handshakeFor(n).Seconds()}
	if burst {
		c := sim.New(simConfig(n, seed, connLimit))
		measureOn(c, n, &res, "N launched", timeout, func() error {
			for range n {
				if _, err := c.Join(); err != nil {
					return err
				}
			}
			return nil
		})
		c.Close()
	}
	c := sim.New(simConfig(n, seed, connLimit))
	defer c.Close()
	start := time.Now()
	size := max(batch, 1)
	sched := newSchedWatch()
	for joined := 0; joined < n-1; {
		k := min(size, n-1-joined)
		for range k {
			if _, err := c.Join(); err != nil {
				res.Changes = append(res.Changes, change{Name: "building", TopoFailed: true, Err: err.Error()})
				return res
			}
		}
		joined += k
		took, err := c.WaitFor(sayWhy(n, c, agreed(c)), time.Now(), timeout)
		if err != nil {
			res.Changes = append(res.Changes, change{Name: "building", TopoFailed: true, Err: fmt.Sprintf("%d peers: %v", joined, err)})
			writeHeap() // where a build that did not form stood
			writeMutex()
			return res
		}
		size = nextBatch(size, batch, took, timeout)
		fmt.Fprintf(os.Stderr, "simbench: N=%d: %d peers agree (%.0f s; the batch of %d in %.0f s, next %d; %s)\n", n, joined, time.Since(start).Seconds(), k, took.Seconds(), size, sched.since())
	}
	settle(c, time.Now(), timeout) // the build's last moves are not the N-th join's
	res.BuildSeconds = time.Since(start).Seconds()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	inuse := ms.HeapInuse
	// Heap in use is what the collector has not yet freed (with GOGC
	// at 200, up to three times the live heap): one run's figure can
	// be twice another's with the same live heap. The live heap after
	// a collection is what the mesh holds.
	runtime.GC()
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(os.Stderr, "simbench: N=%d: built; heap in use %d MB, live %d MB after a collection, %d goroutines; %s\n", n, inuse>>20, ms.HeapAlloc>>20, runtime.NumGoroutine(), degrees(c, connLimit))
	writeHeap()
	writeMutex()
	res.Idle = measureIdle(c, idleWindow)
	fmt.Fprintf(os.Stderr, "simbench: N=%d: idle over %v: %s\n", n, idleWindow, res.Idle)
	measure := func(name string, do func() error) { measureOn(c, n, &res, name, timeout, do) }
	measure("N-th joins", func() error {
		_, err := c.Join()
		return err
	})
	if res.Changes[len(res.Changes)-1].TopoFailed {
		return res
	}
	measure("one joins", func() error {
		_, err := c.Join()
		return err
	})
	measure("one leaves", func() error {
		live := c.Alive()
		c.Leave(live[len(live)/2].Index)
		return nil
	})
	live := c.Alive()
	cut := map[int]int{}
	for i, nd := range live {
		if i%10 == 3 {
			cut[nd.Index] = 1
		}
	}
	c.Partition(cut)
	healCut = map[int]bool{}
	for i := range cut {
		healCut[i] = true
	}
	if _, err := c.WaitFor(agreed(c), time.Now(), timeout); err != nil {
		res.Changes = append(res.Changes, change{Name: "partition heals", Err: "partitioned halves: " + err.Error()})
		return res
	}
	settle(c, time.Now(), timeout)
	if timelineOn {
		printPartSizes(n, connLimit, c)
	}
	measure("partition heals", func() error {
		c.Heal()
		return nil
	})
	return res
}

// degrees describes how full the built mesh is: how many peers are at
// their connection limit, and the room the others have left. A joiner's
// bootstrap is a random peer: in a mesh at its limits, most refuse it.
func degrees(c *sim.Cluster, connLimit int) string {
	if connLimit == 0 {
		connLimit = discovery.DefaultConnLimit
	}
	peers, full, sum, room := 0, 0, 0, 0
	alive := c.Alive()
	for _, nd := range alive {
		d := direct(nd)
		peers++
		sum += d
		if d >= connLimit {
			full++
		} else {
			room += connLimit - d
		}
	}
	if peers == 0 {
		return "no peers"
	}
	// Hops, from ten peers spread over the join order to every other
	// (the graph's diameter and paths: a mesh whose joins pile onto the
	// last joiners, the peers with room, grows long paths).
	paths, hops, most := 0, 0, 0
	for i := 0; i < len(alive); i += max(1, len(alive)/10) {
		for _, o := range alive {
			if p := alive[i].Router.Route(o.Key); len(p) > 1 {
				paths++
				hops += len(p) - 1
				most = max(most, len(p)-1)
			}
		}
	}
	return fmt.Sprintf("mean degree %.1f of a limit of %d, %d of %d peers at the limit, %d connections of room in the others; %.2f hops on average between peers, at most %d (from ten peers to all)", float64(sum)/float64(peers), connLimit, full, peers, room, float64(hops)/float64(max(paths, 1)), most)
}

// direct is how many control connections nd holds.
func direct(nd *sim.Node) int {
	d := 0
	for _, r := range nd.Router.Reachable() {
		if r.Direct {
			d++
		}
	}
	return d
}

// measureOn makes a change on c with do and times the agreement after it,
// appending the figures to res.
func measureOn(c *sim.Cluster, n int, res *result, name string, timeout time.Duration, do func() error) {
	var ctr0 map[string]uint64
	if printCounters {
		ctr0 = c.Counters()
	}
	m0, b0 := c.Traffic()
	ch0 := c.RouterCounter(discovery.CtrChannelSent)
	v0 := c.Verify.Calls.Load()
	cpu0 := cpuTime()
	ch := change{Name: name}
	// A join's timeline (-timeline): the joiner is the next node.
	traced := timelineOn && strings.HasSuffix(name, "joins") && name != "N launched"
	healTraced := timelineOn && name == "partition heals"
	next, t0 := c.NextIndex(), time.Now()
	if traced || healTraced {
		tl.start()
	}
	err := do()
	// Timed from the change's end: the last join returned (its peer
	// is running and dialling), the leave closed, the heal made.
	start := time.Now()
	var watch *joinWatch
	var joiner *sim.Node
	if traced && err == nil {
		if joiner = c.Node(next); joiner != nil {
			watch = watchJoin(c, joiner, t0)
		}
	}
	ch.TopoFailed = err != nil // the change itself failed: no wait
	if err == nil {
		var d time.Duration
		topo := c.CheckTopology
		if traced {
			topo = traceWhy(n, name+" (topology)", start, topo)
		}
		d, err = c.WaitFor(topo, start, timeout)
		ch.TopoSeconds = d.Seconds()
		ch.TopoFailed = err != nil
		if err == nil && !topologyOnly {
			d, err = c.WaitFor(traceWhy(n, name, start, c.Check), start, timeout)
			ch.Seconds = d.Seconds()
		}
	}
	if err != nil {
		ch.Err = err.Error()
	}
	ch.CPUSeconds = (cpuTime() - cpu0).Seconds()
	if traced {
		var lines []tlLine
		if watch != nil {
			lines = watch.stop()
		}
		events := tl.stop()
		if joiner != nil {
			printTimeline(n, name, c, joiner, t0, events, lines)
		}
	}
	m1, b1 := c.Traffic()
	peers := float64(len(c.Alive()))
	ch.Msgs, ch.Bytes = m1-m0, b1-b0
	ch.MsgsPerPeer = float64(ch.Msgs) / peers
	ch.BytesPerPeer = float64(ch.Bytes) / peers
	ch.MsgsOverN = float64(ch.Msgs) / float64(n)
	ch.ChannelMsgsOverN = float64(c.RouterCounter(discovery.CtrChannelSent)-ch0) / float64(n)
	took := max(ch.TopoSeconds, ch.Seconds)
	ch.BackgroundMsgsOverN = background(res.Idle.Frames, peers, took, n)
	ch.BackgroundChannelMsgsOverN = background(res.Idle.ChannelFrames, peers, took, n)
	ch.VerifyPerPeer = float64(c.Verify.Calls.Load()-v0) / peers
	if !ch.TopoFailed {
		st := settle(c, start, timeout)
		ch.SettleSeconds = st.at.Seconds()
		ch.SettleCPUSeconds = (st.cpu - cpu0).Seconds()
		ch.SettleFailed = !st.ok
		ch.SettleMsgsOverN = float64(st.msgs-m0) / float64(n)
		ch.SettleBytesPerPeer = float64(st.bytes-b0) / peers
		ch.IdleMsgsPerPeerPerS = st.idleRate / peers
	}
	if healTraced {
		printHealSummary(n, c, t0, tl.stop()) // until settled: the heal's whole tail
	}
	res.Changes = append(res.Changes, ch)
	fmt.Fprintf(os.Stderr, "simbench: N=%d %s: topology %.2f s, all %.2f s, cpu %.1f s, settled %.1f s (cpu %.1f s); until agreement %.1f frames/N (%s), %.0f bytes/peer; until settled %.1f frames/N, %.0f bytes/peer; idle %.2f frames/peer/s; %.1f verifies/peer %s\n",
		n, name, ch.TopoSeconds, ch.Seconds, ch.CPUSeconds, ch.SettleSeconds, ch.SettleCPUSeconds, ch.MsgsOverN, ch.frameParts(), ch.BytesPerPeer, ch.SettleMsgsOverN, ch.SettleBytesPerPeer, ch.IdleMsgsPerPeerPerS, ch.VerifyPerPeer, ch.Err)
	if printCounters {
		counterDelta(n, name, ctr0, c.Counters())
	}
}

// sayWhy wraps a check so that a wait of more than 30 s says, every 30 s,
// what still disagrees: a build that takes minutes shows where.
func sayWhy(n int, c *sim.Cluster, check func() error) func() error {
	start, last := time.Now(), time.Now()
	ctr0 := c.RouterCounters()
	return func() error {
		err := check()
		if err != nil && time.Since(last) > 30*time.Second {
			last = time.Now()
			var moved []string
			for k, v := range c.RouterCounters() {
				if d := v - ctr0[k]; d > 0 && troubleCounter.MatchString(k) {
					moved = append(moved, fmt.Sprintf("%s +%d", k, d))
				}
			}
			sort.Strings(moved)
			fmt.Fprintf(os.Stderr, "simbench: N=%d: after %.0f s: %v (since the wait began: %s)\n", n, time.Since(start).Seconds(), err, strings.Join(moved, ", "))
		}
		return err
	}
}

// traceWhy prints each new reason check gives for not agreeing, with the
// seconds since start, so a change's tail names what it waited for (at
// 88d8e99 the N=300 N-th join agreed on topology in 1.17 s and on
// everything in 10.58 s: this showed the last wait was DNS, one or two
// peers without the joiner's name until a 10 s pull round).
func traceWhy(n int, name string, start time.Time, check func() error) func() error {
	last := ""
	return func() error {
		err := check()
		why := "agreed"
		if err != nil {
			why = err.Error()
			if i := strings.Index(why, "(first"); i > 0 {
				why = why[:i]
			}
		}
		if why != last {
			last = why
			fmt.Fprintf(os.Stderr, "simbench: N=%d %s: at %.2f s: %s\n", n, name, time.Since(start).Seconds(), why)
		}
		return err
	}
}

// troubleCounter matches the counters of losses, refusals and moves.
var troubleCounter = regexp.MustCompile(`drop|fail|timeout|busy|limit|shed|no_route|expired|full|refused|bad|established|closed|duplicate|applied|routes`)

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// settleQuiet is how long the mesh must be still to count as settled.
const settleQuiet = 3 * time.Second

type settled struct {
	at          time.Duration // from the change to the last event
	msgs, bytes uint64        // traffic counters at the last event
	cpu         time.Duration // the process's CPU time at the last event
	idleRate    float64       // frames a second, all peers, in the quiet window
	ok          bool
}

// settle waits until no router applied a record, made or lost a
// connection for settleQuiet, and returns when (from start) and the
// traffic counters at the last such event: so the next change starts
// from a still mesh, and the change's cost includes all it set off.
func settle(c *sim.Cluster, start time.Time, timeout time.Duration) settled {
	events := func() uint64 {
		return c.RouterCounter(discovery.CtrRecordsApplied, discovery.CtrEstablished, discovery.CtrConnClosed)
	}
	var st settled
	last := events()
	st.msgs, st.bytes = c.Traffic()
	st.cpu = cpuTime()
	lastAt := time.Now()
	st.at = lastAt.Sub(start)
	for time.Since(start) < timeout {
		time.Sleep(250 * time.Millisecond)
		e := events()
		m, b := c.Traffic()
		now := time.Now()
		if e != last {
			last, lastAt = e, now
			st.msgs, st.bytes, st.at, st.cpu = m, b, now.Sub(start), cpuTime()
			continue
		}
		if now.Sub(lastAt) >= settleQuiet {
			st.idleRate = float64(m-st.msgs) / now.Sub(lastAt).Seconds()
			st.ok = true
			return st
		}
	}
	return st
}

func print(results []result, verify time.Duration) {
	fmt.Printf("simulation: seconds from the change (the N-th join returned, the leave, the heal) until every peer agrees on the topology (topo s), and on topology, IPAM ring and DNS names (all s); control traffic from the change until then\n")
	fmt.Printf("one signature check here: %v; target: N=1000 converged within %v of the last join\n", verify.Round(time.Microsecond), target)
	fmt.Printf("signatures: the simulated peers share one verification cache (discovery and ipam, through their Verify seams), so one process does not check N copies of each signature; verif/pr counts the checks each peer asked for (what its host would do), verify CPU that times one measured check\n")
	fmt.Printf("machine load (1, 5, 15 min) at start: %s, at end: %s\n", loadStart, loadavg())
	if topologyOnly {
		fmt.Printf("-routers-only: the routers alone, no IPAM and no DNS running, and only the topology checked (all s is 0): not issue 18's measure\n")
	}
	fmt.Printf("settled s: until no router applied a record or made or lost a connection for %v (the change's tail: a joiner dials until it has half its limit); the last pair of columns counts traffic until then; idle f/p/s: frames per peer per second while still (anti-entropy)\n\n", settleQuiet)
	fmt.Printf("cpu s: CPU seconds the whole process (every peer, and the harness's checks) used from the change until agreement; the machine is shared, so the seconds to agreement depend on its load, the CPU much less; settled cpu: until the mesh settled, the change's whole CPU; ms/peer: that over N, what one host would spend (a change whose total CPU is O(N) keeps it flat)\n\n")
	fmt.Printf("own gossip/N, own chan/N: of the frames until agreement, the change's own gossip (records, haves, wants, digests) and its own channel messages (IPAM, DNS; relays' copies included), each less the idle window's rate of its kind for as long as the change took\n\n")
	fmt.Printf("%6s  %-16s %7s %7s %6s %9s %7s %7s | %9s %8s %8s %11s | %9s %11s | %8s %9s %10s\n", "", "", "", "", "", "", "", "", "until agreement", "", "", "", "until settled", "", "", "", "")
	fmt.Printf("%6s  %-16s %7s %7s %6s %9s %7s %7s | %9s %8s %8s %11s | %9s %11s | %8s %9s %10s\n", "N", "change", "topo s", "all s", "cpu s", "settled s", "set cpu", "ms/peer", "frames/N", "own gsp", "own chan", "bytes/peer", "frames/N", "bytes/peer", "idle f/p/s", "verif/pr", "verify CPU")
	for _, r := range results {
		fmt.Printf("%6d  %-16s %7.0f s: joining the first N-1, up to -batch at a time (halved after a slow batch), waiting for agreement after each; handshake timeout %.0f s, read timeout %.0f s\n", r.N, "(build)", r.BuildSeconds, r.HandshakeSeconds, readFor(r.N).Seconds())
		if r.Idle.Goroutines > 0 {
			fmt.Printf("%6d  %-16s built and still, over %v: %s\n", r.N, "(idle)", idleWindow, r.Idle)
		}
		for _, c := range r.Changes {
			cpu := time.Duration(c.VerifyPerPeer * float64(verify))
			note := ""
			if c.Err != "" {
				note = "FAILED: " + c.Err
			} else if r.N >= 1000 && c.Name == "N-th joins" {
				if time.Duration(c.Seconds*float64(time.Second)) <= target {
					note = "meets target"
				} else {
					note = "misses target"
				}
			}
			if c.SettleFailed {
				note += " (still moving after -timeout)"
			}
			fmt.Printf("%6d  %-16s %7.2f %7.2f %6.1f %9.1f %7.1f %7.2f | %9.1f %8.1f %8.1f %11.0f | %9.1f %11.0f | %8.2f %9.1f %10v %s\n", r.N, c.Name, c.TopoSeconds, c.Seconds, c.CPUSeconds, c.SettleSeconds, c.SettleCPUSeconds, 1000*c.SettleCPUSeconds/float64(r.N),
				c.MsgsOverN, c.ownGossipOverN(), c.ownChannelOverN(), c.BytesPerPeer, c.SettleMsgsOverN, c.SettleBytesPerPeer, c.IdleMsgsPerPeerPerS, c.VerifyPerPeer, cpu.Round(time.Microsecond), note)
		}
	}
	if len(results) > 1 {
		fmt.Printf("\ngrowth of frames/N until settled (a change costing O(N) frames keeps it flat), and of the CPU per peer (O(N) CPU in total keeps it flat; O(N²) grows as N):\n")
		first := results[0]
		for _, r := range results[1:] {
			for _, c := range r.Changes {
				// The same change at the smallest N; a change that did
				// not settle (or a failed build) has nothing to compare.
				i := slices.IndexFunc(first.Changes, func(f change) bool { return f.Name == c.Name })
				if i >= 0 && first.Changes[i].SettleMsgsOverN > 0 && c.SettleMsgsOverN > 0 {
					f := first.Changes[i]
					cpu := ""
					if f.SettleCPUSeconds > 0 {
						cpu = fmt.Sprintf("; CPU per peer until settled %.2fx", (c.SettleCPUSeconds/float64(r.N))/(f.SettleCPUSeconds/float64(first.N)))
					}
					fmt.Printf("  %-16s N=%d over N=%d: %.2fx%s\n", c.Name, r.N, first.N, c.SettleMsgsOverN/f.SettleMsgsOverN, cpu)
				}
			}
		}
	}
}
