// Command scalebench measures what a mesh of real daemons costs as it
// grows, the namespace half of `make bench-scale` (issue 18). It grows one
// bed in steps (N = 10, 20, 40 by default): each step launches the new
// hosts together, every one naming only h1 as its peer, and times from the
// last launch until the mesh has converged: every host sees every other
// reachable and has its host address from IPAM (past --conn-limit a host
// has no connection to every other, so connections are not counted). The
// mesh is then left idle for a settle period (the daemons' --idle-after
// and then some, so every pair has gone quiet), and over a measuring
// window (60 s) it reads, per daemon:
//
//   - CPU: utime+stime from /proc/PID/stat, as a share of one core;
//   - RSS: VmRSS from /proc/PID/status;
//   - underlay bytes per second: what the host's eth0 sent and received
//     (control connections, WireGuard keepalives, probes, ICE), read from
//     the link's counters.
//
// with the machine's load average over the window beside it (the machine
// is shared: a loaded machine makes timers late, not the daemons busier,
// but the figure says what it was measured under). With -profile it then
// takes a CPU profile of every daemon over a second window, after the
// measurement so the profiler does not count in it, and merges them.
//
// It prints one row per N and growth ratios of the largest N over the
// smallest. A benchmark, not a test: it reports and fails only if it could
// not measure.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

type step struct {
	N              int     `json:"n"`
	ConvergeSecs   float64 `json:"converge_seconds"`
	CPUPercentMean float64 `json:"idle_cpu_percent_mean"`
	CPUPercentMax  float64 `json:"idle_cpu_percent_max"`
	RSSMiBMean     float64 `json:"rss_mib_mean"`
	BytesPerSec    float64 `json:"underlay_bytes_per_second_mean"`
	// WakeupsPerSec is the mean of each daemon's voluntary context
	// switches per second (all its threads): how often it sleeps and is
	// woken, timers and messages alike; each wakeup costs a scheduling
	// round trip whatever the work.
	WakeupsPerSec float64 `json:"wakeups_per_second_mean"`
	WindowSecs    float64 `json:"window_seconds"`
	// Load is the machine's 1-minute load average, sampled every 5 s
	// over the window: mean and max.
	LoadMean float64 `json:"load_mean"`
	LoadMax  float64 `json:"load_max"`
	// Control is what h2's control plane did over the window, per second:
	// a breakdown of where the idle bytes go.
	Control map[string]float64 `json:"h2_control_per_second"`
}

// controlCounters are the status counters of h2 the window reports.
var controlCounters = []string{
	"gossip_records_sent", "gossip_records_received", "gossip_antientropy_rounds",
	"gossip_channel_sent", "gossip_channel_received", "gossip_channel_forwarded",
	"udp_relay_probes_sent",
}

func main() {
	sizes := flag.String("n", "10,20,40", "mesh sizes, growing")
	settle := flag.Duration("settle", 0, "idle time after convergence before measuring (0: the daemons' --idle-after plus 30s, so every pair has gone quiet and its ICE session closed)")
	window := flag.Duration("window", 60*time.Second, "measuring window")
	idleAfter := flag.Duration("idle-after", 10*time.Second, "the daemons' --idle-after (their default is 60s; shorter keeps the run short, the idle cost once idle is the same)")
	profile := flag.String("profile", "", "after each measurement, profile every daemon over another window and write the merged CPU profile to DIR/cpu-N.pprof")
	asJSON := flag.Bool("json", false, "print the result as JSON")
	verbose := flag.Bool("v", false, "show every test-bed step")
	flag.Parse()
	var ns []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 || n > 250 || (len(ns) > 0 && n <= ns[len(ns)-1]) {
			fmt.Fprintf(os.Stderr, "scalebench: -n wants growing sizes between 2 and 250, got %q\n", *sizes)
			os.Exit(2)
		}
		ns = append(ns, n)
	}
	if *settle == 0 {
		*settle = *idleAfter + 30*time.Second
	}
	os.Exit(testbed.RunProgram(*verbose, func(p *testbed.Program) bool {
		return run(p, ns, *idleAfter, *settle, *window, *profile, *asJSON)
	}))
}

func run(tb *testbed.Program, sizes []int, idleAfter, settle, window time.Duration, profile string, asJSON bool) bool {
	if err := testbed.Check(); err != nil {
		tb.Fatalf("%v", err)
	}
	dir, err := os.MkdirTemp("", "weavewg-scalebench-")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if _, err := testbed.BuildBinary(dir); err != nil {
		tb.Fatalf("building weavewg: %v", err)
	}
	if err := roomForNeighbours(tb, sizes[len(sizes)-1]); err != nil {
		tb.Fatalf("%v", err)
	}
	bed := testbed.New(tb, testbed.Options{LogLevel: "info", Quiet: true})
	args := []string{"--idle-after", idleAfter.String()}
	first := bed.AddHost(testbed.HostOptions{NoPeers: true, NoLaunch: true, Args: args})
	hosts := []*testbed.Host{first}
	var steps []step
	for _, n := range sizes {
		var fresh []*testbed.Host
		if len(hosts) == 1 && !first.Running() {
			fresh = append(fresh, first)
		}
		for len(hosts) < n {
			h := bed.AddHost(testbed.HostOptions{Peers: []string{first.UnderlayIP}, NoLaunch: true, Args: args})
			hosts = append(hosts, h)
			fresh = append(fresh, h)
		}
		fmt.Fprintf(os.Stderr, "N=%d: launching %d hosts together …\n", n, len(fresh))
		for _, h := range fresh {
			if err := h.Start(); err != nil {
				tb.Fatalf("starting %s: %v", h, err)
			}
		}
		launched := time.Now()
		for _, h := range fresh {
			if err := testbed.Poll(tb, 3*time.Minute, h.Name+"'s API", func() error { _, err := h.StatusErr(); return err }); err != nil {
				tb.Fatalf("%v", err)
			}
		}
		if err := testbed.Poll(tb, 10*time.Minute, fmt.Sprintf("a converged mesh of %d", n), func() error { return converged(hosts) }); err != nil {
			tb.Fatalf("N=%d: %v", n, err)
		}
		s := step{N: n, ConvergeSecs: time.Since(launched).Seconds()}
		fmt.Fprintf(os.Stderr, "N=%d: every host sees every other and has its address after %.1f s; idle %v, then measuring %v …\n", n, s.ConvergeSecs, settle, window)
		time.Sleep(settle)
		if err := converged(hosts); err != nil {
			tb.Fatalf("N=%d: no longer converged after the settle period: %v", n, err)
		}
		if err := measure(hosts, window, &s); err != nil {
			tb.Fatalf("N=%d: %v", n, err)
		}
		fmt.Fprintf(os.Stderr, "N=%d: idle CPU %.2f%% per daemon (max %.2f%%), %.1f wakeups/s, %.0f B/s, load %.1f (max %.1f)\n", n, s.CPUPercentMean, s.CPUPercentMax, s.WakeupsPerSec, s.BytesPerSec, s.LoadMean, s.LoadMax)
		steps = append(steps, s)
		if profile != "" {
			fmt.Fprintf(os.Stderr, "N=%d: profiling every daemon over %v …\n", n, window)
			if err := profileAll(hosts, window, filepath.Join(profile, fmt.Sprintf("cpu-%d.pprof", n))); err != nil {
				fmt.Fprintf(os.Stderr, "N=%d: profile: %v\n", n, err)
			}
		}
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(steps)
		return true
	}
	fmt.Printf("\nIdle mesh of real daemons (namespaces; every host names h1 only; --idle-after %v, settle %v, window %v; CPU is utime+stime over the window)\n", idleAfter, settle, window)
	fmt.Printf("  %4s  %10s  %13s  %12s  %9s  %7s  %12s  %13s\n", "N", "converge s", "idle CPU mean", "idle CPU max", "wakeups/s", "RSS MiB", "underlay B/s", "load mean/max")
	for _, s := range steps {
		fmt.Printf("  %4d  %10.1f  %12.2f%%  %11.2f%%  %9.1f  %7.1f  %12.0f  %8.1f/%.1f\n", s.N, s.ConvergeSecs, s.CPUPercentMean, s.CPUPercentMax, s.WakeupsPerSec, s.RSSMiBMean, s.BytesPerSec, s.LoadMean, s.LoadMax)
	}
	fmt.Printf("  h2's control plane per second over the window:\n")
	for _, name := range controlCounters {
		fmt.Printf("    %-28s", name)
		for _, s := range steps {
			fmt.Printf("  N=%d %8.1f", s.N, s.Control[name])
		}
		fmt.Println()
	}
	if len(steps) > 1 {
		a, b := steps[0], steps[len(steps)-1]
		fmt.Printf("  growth N=%d over N=%d: idle CPU %.2f× (target ≤ 1.5×), wakeups %.2f×, RSS %.2f×, underlay bytes %.2f×\n",
			b.N, a.N, ratio(b.CPUPercentMean, a.CPUPercentMean), ratio(b.WakeupsPerSec, a.WakeupsPerSec), ratio(b.RSSMiBMean, a.RSSMiBMean), ratio(b.BytesPerSec, a.BytesPerSec))
		fmt.Printf("  idle CPU per daemon at N=%d: %.2f%% of a core (target < 0.5%%)\n", b.N, b.CPUPercentMean)
	}
	return true
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// sample is one daemon's counters at one moment.
type sample struct {
	ticks   int64 // utime+stime in clock ticks
	bytes   int64 // eth0 rx+tx
	wakeups int64 // voluntary context switches of every thread
}

func measure(hosts []*testbed.Host, window time.Duration, s *step) error {
	read := func() ([]sample, error) {
		out := make([]sample, len(hosts))
		for i, h := range hosts {
			t, err := cpuTicks(h.Pid())
			if err != nil {
				return nil, fmt.Errorf("%s: %v", h, err)
			}
			b, err := linkBytes(h.Netns)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", h, err)
			}
			w, err := wakeups(h.Pid())
			if err != nil {
				return nil, fmt.Errorf("%s: %v", h, err)
			}
			out[i] = sample{t, b, w}
		}
		return out, nil
	}
	before, err := read()
	if err != nil {
		return err
	}
	ctrBefore, err := hosts[1].StatusErr()
	if err != nil {
		return err
	}
	start := time.Now()
	var loads []float64
	for end := start.Add(window); time.Now().Before(end); {
		if l, err := loadAvg(); err == nil {
			loads = append(loads, l)
		}
		time.Sleep(min(5*time.Second, time.Until(end)))
	}
	if l, err := loadAvg(); err == nil {
		loads = append(loads, l)
	}
	after, err := read()
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	ctrAfter, err := hosts[1].StatusErr()
	if err != nil {
		return err
	}
	s.WindowSecs = secs
	if len(loads) > 0 {
		var sum float64
		for _, l := range loads {
			sum += l
		}
		s.LoadMean, s.LoadMax = sum/float64(len(loads)), slices.Max(loads)
	}
	s.Control = map[string]float64{}
	for _, name := range controlCounters {
		s.Control[name] = float64(ctrAfter.Counters[name]-ctrBefore.Counters[name]) / secs
	}
	const ticksPerSec = 100 // USER_HZ on Linux
	var cpus []float64
	var bytes, rss, wake float64
	for i, h := range hosts {
		cpus = append(cpus, float64(after[i].ticks-before[i].ticks)/ticksPerSec/secs*100)
		wake += float64(after[i].wakeups-before[i].wakeups) / secs
		bytes += float64(after[i].bytes-before[i].bytes) / secs
		r, err := rssMiB(h.Pid())
		if err != nil {
			return fmt.Errorf("%s: %v", h, err)
		}
		rss += r
	}
	n := float64(len(hosts))
	var sum float64
	for _, c := range cpus {
		sum += c
	}
	s.CPUPercentMean = sum / n
	s.CPUPercentMax = slices.Max(cpus)
	s.RSSMiBMean = rss / n
	s.BytesPerSec = bytes / n
	s.WakeupsPerSec = wake / n
	return nil
}

// cpuTicks reads utime+stime of pid. The daemon runs under `ip netns exec`,
// which execs it, so the pid is the daemon's own.
func cpuTicks(pid int) (int64, error) {
	if pid == 0 {
		return 0, fmt.Errorf("daemon not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: the fields after it follow the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	s, err2 := strconv.ParseInt(f[12], 10, 64) // stime, field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return u + s, nil
}

// wakeups sums the voluntary context switches of pid's threads. A thread
// that exited in between takes its count with it, so a window's figure
// may be a little low, never high.
func wakeups(pid int) (int64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("no threads of %d", pid)
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
				n, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
				if err == nil {
					sum += n
				}
			}
		}
	}
	return sum, nil
}

func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// linkBytes is eth0's rx+tx bytes inside the host's namespace.
func linkBytes(netns string) (int64, error) {
	out, err := exec.Command("ip", "-n", netns, "-j", "-s", "link", "show", "eth0").Output()
	if err != nil {
		return 0, fmt.Errorf("ip -s link: %v", err)
	}
	var links []struct {
		Stats struct {
			RX struct{ Bytes int64 } `json:"rx"`
			TX struct{ Bytes int64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("ip -s link: %v", err)
	}
	return links[0].Stats.RX.Bytes + links[0].Stats.TX.Bytes, nil
}

// converged reports why the mesh has not converged: a host that does not
// see another reachable, or has no host address from IPAM yet.
func converged(hosts []*testbed.Host) error {
	for _, h := range hosts {
		st, err := h.StatusErr()
		if err != nil {
			return fmt.Errorf("%s: %v", h, err)
		}
		if st.HostIP == "" {
			return fmt.Errorf("%s has no host address from IPAM yet", h)
		}
		for _, o := range hosts {
			if o == h {
				continue
			}
			p := testbed.PeerByNick(st, o.Name)
			if p == nil {
				return fmt.Errorf("%s does not know %s yet", h, o)
			}
			if !p.Reachable {
				return fmt.Errorf("%s sees %s unreachable", h, o)
			}
		}
	}
	return nil
}

// loadAvg is the machine's 1-minute load average.
func loadAvg() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("empty /proc/loadavg")
	}
	return strconv.ParseFloat(f[0], 64)
}

// profileAll takes a CPU profile of every daemon over d at once, from their
// API sockets' pprof handlers, and merges them into path: one daemon's idle
// minute is too few samples (100 a second of CPU) to say where it goes.
func profileAll(hosts []*testbed.Host, d time.Duration, path string) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), "profiles-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	errs := make(chan error, len(hosts))
	var files []string
	for _, h := range hosts {
		f := filepath.Join(dir, h.Name+".pprof")
		files = append(files, f)
		go func() {
			out, err := exec.Command("curl", "-sf", "--unix-socket", h.Socket, "-o", f,
				fmt.Sprintf("http://weavewg/debug/pprof/profile?seconds=%d", int(d.Seconds()))).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("%s: %v %s", h, err, out)
			}
			errs <- err
		}()
	}
	for range hosts {
		if err := <-errs; err != nil {
			return err
		}
	}
	out, err := exec.Command("go", append([]string{"tool", "pprof", "-proto", "-output", path}, files...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("merging profiles: %v %s", err, out)
	}
	fmt.Fprintf(os.Stderr, "merged CPU profile of %d daemons: go tool pprof -top %s\n", len(hosts), path)
	return nil
}

// neighbourLimits are the kernel's ARP table thresholds.
var neighbourLimits = []string{
	"/proc/sys/net/ipv4/neigh/default/gc_thresh2",
	"/proc/sys/net/ipv4/neigh/default/gc_thresh3",
}

// roomForNeighbours makes the kernel's ARP table large enough for a mesh of
// n namespace hosts, and restores it at the end. The table and its limits
// (gc_thresh3, 1,024 by default) are shared by every namespace of the
// machine, whereas n real hosts would each have a table of their own: a
// mesh of 40 needs 40×39 entries, and past the limit ARP fails ("neighbor
// table overflow", sendmsg ENOBUFS) and hosts cannot reach each other at
// all. Raising the shared limit to n times what each host needs models the
// n separate tables; it changes nothing weavewg sees on any one host.
func roomForNeighbours(tb *testbed.Program, n int) error {
	restoreAbandoned()
	want := n * n * 2 // underlay neighbours, with room for other beds on the machine
	type limit struct {
		path string
		was  int
	}
	var raised []limit
	record := arpRecord(os.Getpid())
	tb.Cleanup(func() {
		ok := true
		for _, l := range raised {
			if err := os.WriteFile(l.path, []byte(strconv.Itoa(l.was)), 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "restoring %s to %d: %v (see %s)\n", l.path, l.was, err, record)
				ok = false
				continue
			}
			fmt.Fprintf(os.Stderr, "%s: restored to %d\n", l.path, l.was)
		}
		if ok {
			os.Remove(record)
		}
	})
	for _, path := range neighbourLimits {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		cur, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return fmt.Errorf("%s: %v", path, err)
		}
		if cur >= want {
			continue
		}
		// Written down before the change, so that a run killed outright
		// (SIGKILL: no cleanup runs) is undone by the next run.
		raised = append(raised, limit{path, cur})
		var lines []string
		for _, l := range raised {
			lines = append(lines, fmt.Sprintf("%s %d", l.path, l.was))
		}
		if err := os.WriteFile(record, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("recording the ARP limits to restore: %v", err)
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
			return fmt.Errorf("raising %s for %d hosts: %v", path, n, err)
		}
		fmt.Fprintf(os.Stderr, "%s: %d → %d for the bed's duration (one ARP table shared by %d namespace hosts)\n", path, cur, want, n)
	}
	return nil
}

// arpRecord is where a run writes the limits it raised.
func arpRecord(pid int) string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("weavewg-scalebench-arp.%d", pid))
}

// restoreAbandoned puts back the ARP limits of runs that died without
// their cleanup (killed with SIGKILL, or the machine's OOM killer).
func restoreAbandoned() {
	records, _ := filepath.Glob(filepath.Join(os.TempDir(), "weavewg-scalebench-arp.*"))
	for _, rec := range records {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Ext(rec), "."))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // still running: its own cleanup restores them
		}
		b, err := os.ReadFile(rec)
		if err != nil {
			continue
		}
		ok := true
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			path, was, found := strings.Cut(l, " ")
			if !found || !slices.Contains(neighbourLimits, path) {
				continue
			}
			if err := os.WriteFile(path, []byte(was), 0o644); err != nil {
				ok = false
				continue
			}
			fmt.Fprintf(os.Stderr, "%s: restored to %s, left raised by a run (pid %d) that died without its cleanup\n", path, was, pid)
		}
		if ok {
			os.Remove(rec)
		}
	}
}
