// Command bench measures weavewg's data plane against its baselines in one
// run on the namespace test bed (integration/testbed), two hosts on the
// underlay 192.0.2.0/24:
//
//	(a) the raw underlay: host 1 → host 2 on their veth addresses
//	(b) the reference: the wireguard-go binary of the module version in
//	    go.mod, one per host namespace, configured over its UAPI socket,
//	    203.0.113.N/24, at weavewg's tunnel MTU, on two hosts of its own
//	    that never run weavewg (whose host firewall and conntrack c pays)
//	(c) weavewg: container h1c1 → container h2c1 across the two hosts
//	(e) the reference with containers: b's wireguard-go, plus on each host
//	    a bridge with proxy ARP and a container behind a veth, as weavewg
//	    attaches one: the like-for-like of c (c/b also counts the
//	    containers' veth, bridge and forwarding hops, which b has not)
//	(d) only with --only …,d: weavewg host → host (10.32.0.1 → 10.32.0.2),
//	    the like-for-like of b without the containers' veth and bridge hops
//	(r) weavewg relayed through a third host
//	(v) raw kernel VXLAN host → host and (w) container → container, on two
//	    hosts that never run weavewg, and (t) weavewg's trusted fast path
//	    container → container, (u) host → host, on two more (trusted.go)
//	(C, T) with --compare BIN: c and t again on hosts of their own running
//	    BIN, measured in the same rounds, for a before/after of a change
//	    under the same load (ratios C/c and T/t)
//
// For each it runs iperf3 TCP (one stream; --parallel N adds -P N), ping
// (RTT avg, p50, p99) and a flood ping (its minimum: the cost of one
// packet, which the load of a shared machine hardly moves), then prints
// the ratios c/a and c/b beside the
// targets of the performance issue (c/b ≥ 1.0 in throughput, RTT within
// 10%). It is a benchmark, not a test: nothing fails on a ratio; the exit
// status is 0 when every path asked for was measured. Everything it makes is
// torn down at the end, on a failure and on Ctrl-C.
//
// Usage (as root; `make bench` builds and runs it):
//
//	bench [--json] [--time 5s] [--pings 200] [--interval 10ms] [--flood 2000] [--parallel 0]
//	      [--rounds 3] [--only a,b,c] [--profile DIR] [-v]
//
// Why 3 rounds of 5 s rather than one of 10 s: the machines this runs on
// have 2 cores shared with other work, whose bursts last seconds. Three
// interleaved rounds put every path under the same mix of load and the
// median drops the round a burst hit; the per-round ratios show the spread.
// Even rounds run the paths in reverse order, so no ratio's two paths are
// always measured in the same order.
// TCP on these sub-millisecond paths is past slow start well within the
// first second, which iperf3 leaves out (-O 1).
package main

import (
	"debug/elf"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

type options struct {
	json     bool
	dur      time.Duration
	pings    int
	flood    int
	interval time.Duration
	parallel int
	rounds   int
	only     map[string]bool
	profile  string
	compare  string
	hold     bool
	verbose  bool
}

func main() {
	var o options
	var only string
	flag.BoolVar(&o.json, "json", false, "print the results as JSON (progress still goes to stderr)")
	flag.DurationVar(&o.dur, "time", 5*time.Second, "length of each iperf3 run, after a first second of slow start that is left out (-O 1)")
	flag.IntVar(&o.pings, "pings", 200, "echo requests per ping run")
	flag.DurationVar(&o.interval, "interval", 10*time.Millisecond, "interval between echo requests")
	flag.IntVar(&o.flood, "flood", 2000, "after each paced ping run, this many echo requests back to back (ping -f), whose minimum is the path's cost per packet with the load of a shared machine mostly left out (0: don't)")
	flag.IntVar(&o.parallel, "parallel", 0, "also run iperf3 with this many parallel streams (0 or 1: don't)")
	flag.IntVar(&o.rounds, "rounds", 3, "measure every path this many times, interleaved (a, b, c, c, b, a, a, …: even rounds in reverse order); report medians")
	flag.StringVar(&only, "only", "a,b,c,e,r,v,w,t", "paths to measure: a (underlay), b (wireguard-go host → host), e (wireguard-go container → container behind a bridge as weavewg's: the like-for-like of c; needs b), c (weavewg container → container), d (weavewg host → host over the tunnel, no container hops: the like-for-like of b), r (weavewg relayed: container on h1 → container on h3 through h2, h1–h3 blocked), v (raw kernel VXLAN host → host, on hosts without weavewg), w (raw kernel VXLAN container → container, each behind a bridge as weavewg attaches one: the like-for-like of t), t (weavewg --trusted-subnets container → container over its VXLAN), u (weavewg --trusted-subnets host → host: the like-for-like of v)")
	flag.StringVar(&o.profile, "profile", "", "record a CPU profile (perf) during the first one-stream run of each path into DIR, and print the top symbols: of the tunnel processes (wireguard-go, weavewg), or for the kernel paths v, t, u of the two iperf3 processes, whose system calls and softirqs do the kernel's forwarding and encapsulation")
	flag.StringVar(&o.compare, "compare", "", "another weavewg binary (an earlier build, say): also measure c and t with it on hosts of their own (paths C and T), interleaved in the same rounds, and print C/c and T/t")
	flag.BoolVar(&o.hold, "hold", false, "set the paths up, print their namespaces and addresses, and wait for Ctrl-C instead of measuring (for profiling by hand)")
	flag.BoolVar(&o.verbose, "v", false, "log every step of the test bed to stderr")
	flag.Parse()
	o.only = map[string]bool{}
	for _, p := range strings.Split(only, ",") {
		p = strings.TrimSpace(p)
		if !strings.Contains("abcdervwtu", p) || len(p) != 1 {
			fmt.Fprintf(os.Stderr, "bench: --only: unknown path %q (want a, b, c, d, e, r, v, w, t, u)\n", p)
			os.Exit(2)
		}
		o.only[p] = true
	}
	if o.only["e"] {
		o.only["b"] = true // e is b's wireguard-go with containers added
	}
	if o.rounds < 1 || o.pings < 1 || o.dur < time.Second {
		fmt.Fprintln(os.Stderr, "bench: --rounds and --pings must be ≥ 1, --time ≥ 1s")
		os.Exit(2)
	}
	if err := testbed.Check(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
	for _, tool := range []string{"iperf3", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s is not installed (make bench installs it)\n", tool)
			os.Exit(1)
		}
	}
	if o.compare != "" {
		if _, err := os.Stat(o.compare); err != nil {
			fmt.Fprintf(os.Stderr, "bench: --compare: %v\n", err)
			os.Exit(2)
		}
		if o.only["c"] {
			o.only["C"] = true
		}
		if o.only["t"] {
			o.only["T"] = true
		}
	}
	if o.profile != "" {
		if _, err := exec.LookPath("perf"); err != nil {
			fmt.Fprintln(os.Stderr, "bench: --profile needs perf (apt-get install linux-perf)")
			os.Exit(1)
		}
	}

	tb := &benchTB{verbose: o.verbose}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		stopping.Store(true)
		fmt.Fprintf(os.Stderr, "\nbench: %v: tearing the test bed down\n", s)
		tb.RunCleanups()
		os.Exit(130)
	}()

	code := 1
	func() {
		defer tb.RunCleanups()
		err := try(func() { code = run(tb, o) })
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			if !o.verbose {
				fmt.Fprintf(os.Stderr, "---- last steps ----\n%s\n", tb.Recent(25))
			}
			code = 1
		}
	}()
	os.Exit(code)
}

// stopping is set by the signal handler: the bed is being torn down, so
// the measurements stop and say nothing more.
var stopping atomic.Bool

// progress prints a step to stderr (the table or JSON goes to stdout).
func progress(format string, args ...any) {
	if stopping.Load() {
		// Wait here for the handler to finish the teardown and exit.
		for {
			time.Sleep(time.Hour)
		}
	}
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(tb *benchTB, o options) int {
	start := time.Now()
	rep := &Report{
		Started:  start.UTC().Format(time.RFC3339),
		CPUs:     runtime.NumCPU(),
		LoadFrom: loadavg(),
		Seconds:  o.dur.Seconds(),
		Pings:    o.pings,
		Interval: float64(o.interval) / 1e6,
		MTU:      refMTU,
		Rounds:   o.rounds,
	}
	dir, err := os.MkdirTemp("", "weavewg-bench-")
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })

	// Binaries first: a build failure of weavewg still leaves a and b.
	var wgBin string
	if o.only["b"] {
		progress("building wireguard-go (reference) …")
		var err error
		wgBin, rep.WireguardVersion, err = buildWireguardGo(dir)
		if err != nil {
			tb.Fatalf("bench: %v", err)
		}
	}
	var cErr error
	wwg := o.only["c"] || o.only["d"] || o.only["r"] || o.only["t"] || o.only["u"]
	if wwg {
		progress("building weavewg …")
		bin, err := testbed.BuildBinary(dir)
		if err != nil {
			cErr = err
		} else {
			warnDynamic(rep, bin)
		}
	}
	if o.compare != "" {
		warnDynamic(rep, o.compare)
	}

	progress("building the test bed: 2 hosts on %s0/24 …", testbed.UnderlayNet)
	bed := testbed.New(tb, testbed.Options{LogLevel: "info", Quiet: !o.verbose})
	h1 := bed.AddHost(testbed.HostOptions{NoLaunch: true})
	h2 := bed.AddHost(testbed.HostOptions{NoLaunch: true})
	// (b, e) The reference on two hosts of its own that never run
	// weavewg: in h1 and h2 weavewg's nftables chains, conntrack and
	// sockets would hook its packets too (as v and w, trusted.go).
	var ref1, ref2 *testbed.Host
	if o.only["b"] {
		ref1 = bed.AddHost(testbed.HostOptions{NoLaunch: true, NoPeers: true})
		ref2 = bed.AddHost(testbed.HostOptions{NoLaunch: true, NoPeers: true})
	}
	// (r) A third host that knows only h2 and cannot reach h1 on the
	// underlay: h1 ↔ h3 traffic is relayed by h2.
	var h3 *testbed.Host
	if o.only["r"] {
		h3 = bed.AddHost(testbed.HostOptions{NoLaunch: true, Peers: []string{h2.UnderlayIP}})
	}
	var th, thC, rh trustedHosts
	if o.only["t"] || o.only["u"] {
		th = addTrustedHosts(bed, "")
	}
	if o.only["v"] || o.only["w"] {
		rh = addRawHosts(bed)
	}
	var cmp1, cmp2 *testbed.Host
	if o.only["C"] {
		pw := "bench-compare-" + bed.Prefix
		cmp1 = bed.AddHost(testbed.HostOptions{NoLaunch: true, NoPeers: true, Password: pw, Binary: o.compare})
		cmp2 = bed.AddHost(testbed.HostOptions{NoLaunch: true, Peers: []string{cmp1.UnderlayIP}, Password: pw, Binary: o.compare})
	}
	if o.only["T"] {
		thC = addTrustedHosts(bed, o.compare)
	}

	type path struct {
		key, name, from, to string
		srcNS, dstNS, dst   string
		pids                func() []int
		ref                 []*refNode
	}
	var paths []*path
	if o.only["a"] {
		if err := pingOnce(h1.Netns, h2.UnderlayIP); err != nil {
			tb.Fatalf("bench: underlay: %v", err)
		}
		paths = append(paths, &path{key: "a", name: "underlay veth",
			from: "h1 " + h1.UnderlayIP, to: "h2 " + h2.UnderlayIP,
			srcNS: h1.Netns, dstNS: h2.Netns, dst: h2.UnderlayIP,
			pids: func() []int { return nil }})
	}
	if o.only["b"] {
		progress("starting wireguard-go %s in both hosts …", rep.WireguardVersion)
		nodes := startRef(tb, bed, wgBin, []*testbed.Host{ref1, ref2}, o.only["e"])
		if err := testbed.Poll(tb, 15*time.Second, "wireguard-go handshake", func() error {
			return pingOnce(ref1.Netns, nodes[1].Addr)
		}); err != nil {
			tb.Fatalf("bench: reference: %v", err)
		}
		paths = append(paths, &path{key: "b", name: "wireguard-go " + shortVersion(rep.WireguardVersion),
			from: ref1.Name + " " + nodes[0].Addr, to: ref2.Name + " " + nodes[1].Addr,
			srcNS: ref1.Netns, dstNS: ref2.Netns, dst: nodes[1].Addr,
			pids: func() []int { return []int{nodes[0].Pid(), nodes[1].Pid()} },
			ref:  nodes})
		if o.only["e"] {
			if err := testbed.Poll(tb, 15*time.Second, "wireguard-go container ping", func() error {
				return pingOnce(nodes[0].CNetns, nodes[1].CAddr)
			}); err != nil {
				tb.Fatalf("bench: reference containers: %v", err)
			}
			paths = append(paths, &path{key: "e", name: "wireguard-go container",
				from: ref1.Name + "e " + nodes[0].CAddr, to: ref2.Name + "e " + nodes[1].CAddr,
				srcNS: nodes[0].CNetns, dstNS: nodes[1].CNetns, dst: nodes[1].CAddr,
				pids: func() []int { return []int{nodes[0].Pid(), nodes[1].Pid()} }})
		}
	}
	if wwg && cErr == nil {
		if o.only["c"] || o.only["d"] || o.only["r"] {
			progress("launching weavewg on both hosts, attaching a container to each …")
		}
		var c1, c2, r1, r3 *testbed.Container
		cErr = try(func() {
			if !o.only["c"] && !o.only["d"] && !o.only["r"] {
				return // only the trusted hosts' weavewg (t, u)
			}
			h1.Launch()
			h2.Launch()
			bed.WaitMesh(60*time.Second, h1, h2)
			if o.only["c"] {
				c1 = h1.AddContainer()
				c2 = h2.AddContainer()
				if err := c1.PingEventually(c2.Addr, 30*time.Second); err != nil {
					tb.Fatalf("%v", err)
				}
			}
			if o.only["r"] {
				bed.BlockHosts(h1, h3)
				h3.Launch()
				r1, r3 = h1.AddContainer(), h3.AddContainer()
				if err := r1.PingEventually(r3.Addr, 60*time.Second); err != nil {
					tb.Fatalf("relayed: %v", err)
				}
			}
			if o.only["d"] {
				exposeHosts(h1, h2)
				if err := testbed.Poll(tb, 30*time.Second, "ping h1 → h2 host IP", func() error {
					return pingOnce(h1.Netns, hostAddr(h2))
				}); err != nil {
					tb.Fatalf("%v", err)
				}
			}
		})
		daemons := func() []int { return []int{h1.Pid(), h2.Pid()} }
		if cErr == nil && o.only["C"] {
			cErr = try(func() {
				cmp1.Launch()
				cmp2.Launch()
				bed.WaitMesh(60*time.Second, cmp1, cmp2)
				k1, k2 := cmp1.AddContainer(), cmp2.AddContainer()
				if err := k1.PingEventually(k2.Addr, 30*time.Second); err != nil {
					tb.Fatalf("--compare: %v", err)
				}
				paths = append(paths, &path{key: "C", name: "weavewg (--compare)",
					from: cmp1.Name + "c1 " + k1.Addr, to: cmp2.Name + "c1 " + k2.Addr,
					srcNS: k1.Netns, dstNS: k2.Netns, dst: k2.Addr,
					pids: func() []int { return []int{cmp1.Pid(), cmp2.Pid()} }})
			})
		}
		if cErr == nil {
			if o.only["c"] {
				paths = append(paths, &path{key: "c", name: "weavewg",
					from: "h1c1 " + c1.Addr, to: "h2c1 " + c2.Addr,
					srcNS: c1.Netns, dstNS: c2.Netns, dst: c2.Addr, pids: daemons})
			}
			if o.only["r"] {
				paths = append(paths, &path{key: "r", name: "weavewg relayed via h2",
					from: "h1 " + r1.Name + " " + r1.Addr, to: "h3 " + r3.Name + " " + r3.Addr,
					srcNS: r1.Netns, dstNS: r3.Netns, dst: r3.Addr,
					pids: func() []int { return []int{h1.Pid(), h2.Pid(), h3.Pid()} }})
			}
			if o.only["d"] {
				paths = append(paths, &path{key: "d", name: "weavewg host → host",
					from: "h1 " + hostAddr(h1), to: "h2 " + hostAddr(h2),
					srcNS: h1.Netns, dstNS: h2.Netns, dst: hostAddr(h2), pids: daemons})
			}
		} else if !o.verbose {
			fmt.Fprintf(os.Stderr, "---- last steps ----\n%s\n", tb.Recent(25))
			for _, h := range []*testbed.Host{h1, h2} {
				if log := h.Log(); log != "" {
					fmt.Fprintf(os.Stderr, "---- %s daemon log (tail) ----\n%s\n", h, tailString(log, 15))
				}
			}
		}
	}
	if cErr != nil {
		progress("weavewg path not measured: %v", cErr)
		rep.Errors = append(rep.Errors, "weavewg: "+cErr.Error())
	}
	if o.only["v"] || o.only["w"] {
		progress("making raw kernel VXLAN devices on %s and %s (no weavewg there) …", rh.a, rh.b)
		if err := startRawVXLAN(tb, bed, rh, o.only["w"]); err != nil {
			tb.Fatalf("bench: raw VXLAN: %v", err)
		}
		if o.only["v"] {
			paths = append(paths, &path{key: "v", name: "kernel VXLAN (raw)",
				from: rh.a.Name + " " + rawVXLANAddr(0), to: rh.b.Name + " " + rawVXLANAddr(1),
				srcNS: rh.a.Netns, dstNS: rh.b.Netns, dst: rawVXLANAddr(1),
				pids: func() []int { return nil }})
		}
		if o.only["w"] {
			paths = append(paths, &path{key: "w", name: "kernel VXLAN (raw) container",
				from: rh.a.Name + "w " + rawContainerAddr(0), to: rh.b.Name + "w " + rawContainerAddr(1),
				srcNS: rawContainerNetns(rh.a), dstNS: rawContainerNetns(rh.b), dst: rawContainerAddr(1),
				pids: func() []int { return nil }})
		}
	}
	if (o.only["t"] || o.only["u"]) && cErr == nil {
		progress("launching weavewg --trusted-subnets on %s and %s …", th.a, th.b)
		t1, t2, err := startTrusted(bed, th)
		if err != nil {
			progress("trusted path not measured: %v", err)
			rep.Errors = append(rep.Errors, err.Error())
		} else {
			tpids := func() []int { return []int{th.a.Pid(), th.b.Pid()} }
			if o.only["u"] {
				exposeHosts(th.a, th.b)
			}
			if o.only["T"] {
				progress("launching the --compare binary with --trusted-subnets on %s and %s …", thC.a, thC.b)
				k1, k2, err := startTrusted(bed, thC)
				if err != nil {
					progress("trusted path of --compare not measured: %v", err)
					rep.Errors = append(rep.Errors, "--compare: "+err.Error())
				} else {
					paths = append(paths, &path{key: "T", name: "weavewg vxlan (--compare)",
						from: thC.a.Name + "c1 " + k1.Addr, to: thC.b.Name + "c1 " + k2.Addr,
						srcNS: k1.Netns, dstNS: k2.Netns, dst: k2.Addr,
						pids: func() []int { return []int{thC.a.Pid(), thC.b.Pid()} }})
				}
			}
			if o.only["t"] {
				paths = append(paths, &path{key: "t", name: "weavewg vxlan (trusted)",
					from: th.a.Name + "c1 " + t1.Addr, to: th.b.Name + "c1 " + t2.Addr,
					srcNS: t1.Netns, dstNS: t2.Netns, dst: t2.Addr, pids: tpids})
			}
			if o.only["u"] {
				paths = append(paths, &path{key: "u", name: "weavewg vxlan host → host",
					from: th.a.Name + " " + hostAddr(th.a), to: th.b.Name + " " + hostAddr(th.b),
					srcNS: th.a.Netns, dstNS: th.b.Netns, dst: hostAddr(th.b), pids: tpids})
			}
		}
	}

	// The baselines at weavewg's MTU: the reference wireguard-go and its
	// containers at the TUN's, raw VXLAN at weavewg's VXLAN device's, so
	// that each ratio compares data planes, not packet sizes.
	if cErr == nil && (o.only["c"] || o.only["d"]) {
		if mtu, err := bed.LinkMTU(h1.Netns, "weavewg0"); err == nil {
			rep.MTU = mtu
			for _, p := range paths {
				for _, n := range p.ref {
					setRefMTU(bed, n, mtu)
				}
			}
		}
	}
	if (o.only["v"] || o.only["w"]) && (o.only["t"] || o.only["u"]) {
		if mtu, err := bed.LinkMTU(th.a.Netns, "vxweavewg0"); err == nil && mtu != refMTU {
			progress("raw VXLAN at weavewg's VXLAN MTU %d", mtu)
			setRawVXLANMTU(bed, rh, o.only["w"], mtu)
		}
	}

	for _, p := range paths {
		if p.ref != nil {
			if err := checkRefRoute(p.ref[0], p.ref[1]); err != nil {
				tb.Fatalf("bench: reference path: %v", err)
			}
			if err := checkRefRoute(p.ref[1], p.ref[0]); err != nil {
				tb.Fatalf("bench: reference path: %v", err)
			}
		}
	}

	if o.hold {
		var hs []holdPath
		for _, p := range paths {
			hs = append(hs, holdPath{p.key, p.name, p.srcNS, p.dstNS, p.dst, p.pids()})
		}
		hold(hs)
		return 0
	}

	// Measure: per round, the pings of every path, then one-stream iperf3 of
	// every path, then the parallel one, so slow drifts in the machine's load
	// hit all paths alike.
	results := map[string]*Result{}
	raw := map[string][]Result{}
	for _, p := range paths {
		results[p.key] = &Result{Key: p.key, Name: p.name, From: p.from, To: p.to}
	}
	for r := 1; r <= o.rounds; r++ {
		round := ""
		if o.rounds > 1 {
			round = fmt.Sprintf(" [round %d/%d]", r, o.rounds)
		}
		if l := strings.Fields(loadavg()); len(l) > 0 {
			rep.RoundLoads = append(rep.RoundLoads, l[0])
		}
		cur := map[string]*Result{}
		for _, p := range paths {
			cur[p.key] = &Result{}
		}
		// Every other round runs the paths in reverse order, so that no
		// path always follows the same one (t always ran right after w,
		// C right after c) nor always comes first or last in a round.
		order := slices.Clone(paths)
		if r%2 == 0 {
			slices.Reverse(order)
		}
		for _, p := range order {
			progress("(%s) %s: ping %d × %v%s …", p.key, p.name, o.pings, o.interval, round)
			l, err := ping(p.srcNS, p.dst, o.pings, o.interval)
			if err == nil && o.flood > 0 {
				err = floodPing(&l, p.srcNS, p.dst, o.flood)
			}
			if err != nil {
				l.Err = err.Error()
			}
			cur[p.key].Ping = l
		}
		for _, streams := range streamCounts(o.parallel) {
			for _, p := range order {
				progress("(%s) %s: iperf3 -P %d for %v%s …", p.key, p.name, streams, o.dur, round)
				var prof *perfRun
				profiled := o.profile != "" && streams == 1 && r == 1
				// The kernel data planes (v, t, u) do their work in the
				// iperf3 processes' system calls and softirqs, not in a
				// tunnel process: those are sampled once they run.
				kernelPath := strings.Contains("vwtuT", p.key)
				if profiled && !kernelPath && len(p.pids()) > 0 {
					prof = startPerf(o.profile, p.key, p.pids(), o.dur)
				}
				var onStart func([]int)
				if profiled && kernelPath {
					onStart = func(iperfPIDs []int) { prof = startPerf(o.profile, p.key, iperfPIDs, o.dur) }
				}
				var rx0, tx0 uint64
				if p.ref != nil {
					rx0, tx0, _ = refBytes(p.ref[0])
				}
				t, err := iperf3(p.srcNS, p.dstNS, p.dst, 5201, o.dur, streams, p.pids(), onStart)
				if err != nil {
					t.Err = err.Error()
					progress("(%s) %v", p.key, err)
				}
				if p.ref != nil {
					if rx1, tx1, err := refBytes(p.ref[0]); err == nil {
						t.TunnelBytes = (rx1 - rx0) + (tx1 - tx0)
					}
				}
				if prof != nil {
					results[p.key].Profile = prof.finish()
				}
				if streams == 1 {
					cur[p.key].TCP1 = &t
				} else {
					cur[p.key].TCPn = &t
				}
			}
		}
		for _, p := range paths {
			raw[p.key] = append(raw[p.key], *cur[p.key])
		}
	}
	for _, p := range paths {
		median(results[p.key], raw[p.key])
		rep.Paths = append(rep.Paths, *results[p.key])
	}
	rep.Ratios = ratios(results, raw)
	rep.LoadTo = loadavg()
	rep.Elapsed = time.Since(start).Seconds()

	if o.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printTable(os.Stdout, rep)
	}

	measured := len(paths) == len(o.only)
	for _, p := range rep.Paths {
		if p.Ping.Err != "" || p.TCP1 == nil || p.TCP1.Err != "" {
			measured = false
		}
	}
	if !measured {
		return 1
	}
	return 0
}

func streamCounts(parallel int) []int {
	if parallel > 1 {
		return []int{1, parallel}
	}
	return []int{1}
}

// median fills res with the per-metric medians of the rounds (the only
// values when there was one round).
func median(res *Result, rounds []Result) {
	if len(rounds) == 1 {
		res.Ping, res.TCP1, res.TCPn = rounds[0].Ping, rounds[0].TCP1, rounds[0].TCPn
		return
	}
	res.Rounds = rounds
	// Each ping figure is its own median over the rounds that got replies.
	var ok []Latency
	for _, r := range rounds {
		if r.Ping.Received > 0 {
			ok = append(ok, r.Ping)
		}
	}
	if len(ok) == 0 {
		res.Ping = rounds[0].Ping
	} else {
		res.Ping = ok[0]
		res.Ping.Err = ""
		for _, f := range []func(*Latency) *float64{
			func(l *Latency) *float64 { return &l.AvgMs },
			func(l *Latency) *float64 { return &l.MinMs },
			func(l *Latency) *float64 { return &l.P50Ms },
			func(l *Latency) *float64 { return &l.P99Ms },
			func(l *Latency) *float64 { return &l.MaxMs },
			func(l *Latency) *float64 { return &l.FloodMinMs },
			func(l *Latency) *float64 { return &l.FloodAvgMs },
		} {
			var vs []float64
			for i := range ok {
				vs = append(vs, *f(&ok[i]))
			}
			sort.Float64s(vs)
			*f(&res.Ping) = vs[len(vs)/2]
		}
		// Loss over all rounds.
		res.Ping.Sent, res.Ping.Received = 0, 0
		for _, r := range rounds {
			res.Ping.Sent += r.Ping.Sent
			res.Ping.Received += r.Ping.Received
		}
	}
	pick := func(get func(Result) *Throughput) *Throughput {
		var ts []*Throughput
		for _, r := range rounds {
			if t := get(r); t != nil && t.Err == "" {
				ts = append(ts, t)
			}
		}
		if len(ts) == 0 {
			return get(rounds[0])
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i].Gbps < ts[j].Gbps })
		return ts[len(ts)/2]
	}
	res.TCP1 = pick(func(r Result) *Throughput { return r.TCP1 })
	res.TCPn = pick(func(r Result) *Throughput { return r.TCPn })
}

// warnDynamic notes in the report when bin is dynamically linked (built
// with cgo, as a plain `go build` does where a C compiler is installed):
// glibc registers rseq for every thread, which the kernel then serves at
// every return to the thread (__rseq_handle_notify_resume in perf: about
// 1% of the daemons' samples under a flood ping), a cost the static
// wireguard-go reference and `make build`'s static weavewg do not pay. A
// before/after with one such binary measures the build too.
func warnDynamic(rep *Report, bin string) {
	f, err := elf.Open(bin)
	if err != nil {
		return
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			msg := fmt.Sprintf("%s is dynamically linked (cgo), unlike the static wireguard-go and make build's weavewg: glibc's per-thread rseq costs it about 1%% of its samples; build it with CGO_ENABLED=0 to compare like with like", bin)
			progress("warning: %s", msg)
			rep.Warnings = append(rep.Warnings, msg)
			return
		}
	}
}

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func shortVersion(v string) string {
	// v0.0.0-20260522210424-ecfc5a8d5446 → 2026-05-22 (ecfc5a8d)
	parts := strings.Split(v, "-")
	if len(parts) == 3 && len(parts[1]) == 14 && len(parts[2]) >= 8 {
		d := parts[1]
		return fmt.Sprintf("%s-%s-%s (%s)", d[:4], d[4:6], d[6:8], parts[2][:8])
	}
	return v
}

func tailString(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// exposeHosts opens the hosts' own overlay addresses to the overlay
// (weavewg expose): d and u run iperf3 on them, and a host's services are
// closed to the overlay but DNS until exposed. A binary without the command
// (older than it) had them open.
func exposeHosts(hs ...*testbed.Host) {
	for _, h := range hs {
		if out, err := h.CLIErr("expose"); err != nil && !strings.Contains(out, "No help topic") {
			progress("%s: weavewg expose: %v", h, err)
		}
	}
}

// hostAddr is a host's overlay address without its prefix length.
func hostAddr(h *testbed.Host) string {
	a, _, _ := strings.Cut(h.HostIP, "/")
	return a
}
