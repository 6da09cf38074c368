// Command demo builds a weavewg mesh of three namespace hosts with two
// containers each, shows `weavewg status`, pings every container from every
// other one, prints the matrix, and tears everything down (also on Ctrl-C).
// It exits non-zero if anything failed. Run it as root: `make demo`.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// demoTB implements testbed.TB for a program: Fatalf panics with fatal,
// which main recovers; cleanups run once, last first, from main or from the
// signal handler.
type demoTB struct {
	verbose bool

	mu       sync.Mutex
	cleanups []func()
	done     bool // cleanups have started; later registrations run at once
	failed   bool

	interrupted atomic.Bool

	once     sync.Once
	finished chan struct{} // closed when the cleanups have all run
}

type fatal struct{ msg string }

func (d *demoTB) Helper() {}

func (d *demoTB) Logf(format string, args ...any) {
	if d.verbose {
		fmt.Fprintf(os.Stderr, "  · "+format+"\n", args...)
		return
	}
	// Without -v only the waits and surprises are shown.
	msg := fmt.Sprintf(format, args...)
	if strings.Contains(msg, "waiting") || strings.Contains(msg, "exited") || strings.Contains(msg, "did not") {
		fmt.Fprintf(os.Stderr, "  · %s\n", msg)
	}
}

func (d *demoTB) Fatalf(format string, args ...any) {
	d.mu.Lock()
	d.failed = true
	d.mu.Unlock()
	panic(fatal{fmt.Sprintf(format, args...)})
}

func (d *demoTB) Failed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}

func (d *demoTB) Cleanup(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done {
		f()
		return
	}
	d.cleanups = append(d.cleanups, f)
}

// runCleanups runs the cleanups once; a second caller (main racing the
// signal handler) waits until the first has finished, so neither exits the
// process halfway through the teardown.
func (d *demoTB) runCleanups() {
	d.once.Do(func() {
		d.mu.Lock()
		d.done = true
		fs := d.cleanups
		d.cleanups = nil
		d.mu.Unlock()
		d.cleanupAll(fs)
		close(d.finished)
	})
	<-d.finished
}

func (d *demoTB) cleanupAll(fs []func()) {
	for i := len(fs) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					fmt.Fprintf(os.Stderr, "cleanup: %v\n", r)
				}
			}()
			fs[i]()
		}()
	}
}

func main() {
	hosts := flag.Int("hosts", 3, "number of hosts")
	perHost := flag.Int("containers", 2, "containers per host")
	verbose := flag.Bool("v", false, "show every test-bed step")
	flag.Parse()

	tb := &demoTB{verbose: *verbose, finished: make(chan struct{})}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigc
		tb.interrupted.Store(true)
		fmt.Fprintf(os.Stderr, "\n%v: tearing down...\n", s)
		tb.runCleanups()
		fmt.Fprintln(os.Stderr, "torn down")
		os.Exit(130)
	}()

	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				if tb.interrupted.Load() {
					// The teardown pulled the bed from under run; say nothing.
				} else if f, ok := r.(fatal); ok {
					fmt.Fprintf(os.Stderr, "\nFAILED: %s\n", f.msg)
				} else {
					fmt.Fprintf(os.Stderr, "\npanic: %v\n", r)
				}
				code = 1
			}
		}()
		if !run(tb, *hosts, *perHost) {
			code = 1
		}
	}()
	if code != 0 {
		tb.mu.Lock()
		tb.failed = true
		tb.mu.Unlock()
	}
	if tb.interrupted.Load() {
		tb.runCleanups() // the handler's; wait for it, it exits 130
		select {}
	}
	signal.Stop(sigc)
	fmt.Println("\ntearing down...")
	tb.runCleanups()
	if code == 0 {
		fmt.Println("demo: all good")
	} else {
		fmt.Println("demo: FAILED")
	}
	os.Exit(code)
}

func run(tb *demoTB, nHosts, perHost int) bool {
	if err := testbed.Check(); err != nil {
		tb.Fatalf("%v", err)
	}
	if os.Getenv(testbed.EnvBinary) == "" {
		fmt.Print("building weavewg... ")
	}
	dir, err := os.MkdirTemp("", "weavewg-demo-bin-")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	bin, err := testbed.BuildBinary(dir)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	if os.Getenv(testbed.EnvBinary) == "" {
		fmt.Println("ok")
	}
	b := testbed.New(tb, testbed.Options{Binary: bin, Quiet: true, LogLevel: "info"})
	fmt.Printf("test bed %s: underlay bridge in namespace %s, logs in %s\n\n", b.Prefix, b.Underlay, b.Dir)

	start := time.Now()
	var hs []*testbed.Host
	for i := 0; i < nHosts; i++ {
		t0 := time.Now()
		h := b.AddHost(testbed.HostOptions{})
		hs = append(hs, h)
		peers := "(first host)"
		if len(h.Peers) > 0 {
			peers = "peers " + strings.Join(h.Peers, " ")
		}
		fmt.Printf("host %s  underlay %-11s  overlay %-14s  weavewg launch %s  (API up in %.1fs)\n",
			h.Name, h.UnderlayIP, h.HostIP, peers, time.Since(t0).Seconds())
	}
	var cs []*testbed.Container
	for _, h := range hs {
		for j := 0; j < perHost; j++ {
			c := h.AddContainer()
			cs = append(cs, c)
			fmt.Printf("  container %s on %s: weavewg attach --name %s → %s\n", c.Name, h.Name, c.Name, c.IP)
		}
	}
	fmt.Print("\nwaiting for the mesh... ")
	if err := testbed.Poll(tb, 60*time.Second, "mesh", func() error { return testbed.CheckMesh(hs) }); err != nil {
		fmt.Println("no")
		tb.Fatalf("%v", err)
	}
	fmt.Printf("every host sees every other one (%.1fs since the first launch)\n", time.Since(start).Seconds())
	// Peers start relayed until their direct path answers a probe; on one
	// flat underlay every pair turns direct within seconds.
	fmt.Print("waiting for direct paths... ")
	if err := testbed.Poll(tb, 20*time.Second, "direct paths", func() error { return allDirect(hs) }); err != nil {
		fmt.Printf("not all: %v\n", err)
	} else {
		fmt.Println("every pair is direct")
	}

	for _, args := range [][]string{{"status"}, {"status", "connections"}} {
		fmt.Printf("\n%s# weavewg %s\n", hs[0].Name, strings.Join(args, " "))
		out, err := hs[0].CLIErr(args...)
		fmt.Print(out)
		if err != nil {
			fmt.Printf("(%v)\n", err)
		}
	}

	fmt.Printf("\npinging every container from every other one...\n")
	// The first pair may wait for WireGuard handshakes; the rest should not.
	results := testbed.PingMatrix(cs, 15*time.Second)
	ok := printMatrix(cs, results)

	if len(cs) >= perHost+1 && perHost > 0 {
		from, to := cs[0], cs[perHost] // first containers of the first two hosts
		r, err := testbed.Transfer(from, to, 5000, 20<<20, 60*time.Second)
		if err != nil {
			fmt.Printf("\n20 MB TCP %s → %s: FAILED: %v\n", from, to, err)
			ok = false
		} else {
			fmt.Printf("\n20 MB TCP %s → %s: identical (sha256 %x…), %.0f Mbit/s\n", from, to, r.SHA256[:6], r.Mbps())
		}
	}
	return ok
}

func printMatrix(cs []*testbed.Container, rs []testbed.PingResult) bool {
	res := map[[2]string]testbed.PingResult{}
	for _, r := range rs {
		res[[2]string{r.From.Name, r.To.Name}] = r
	}
	fmt.Printf("\n%-6s", "from\\to")
	for _, c := range cs {
		fmt.Printf(" %6s", c.Name)
	}
	fmt.Println()
	good, total := 0, 0
	for _, from := range cs {
		fmt.Printf("%-7s", from.Name)
		for _, to := range cs {
			cell := "-"
			if from != to {
				total++
				r := res[[2]string{from.Name, to.Name}]
				if r.Err == nil {
					good++
					cell = "ok"
				} else {
					cell = "FAIL"
				}
			}
			fmt.Printf(" %6s", cell)
		}
		fmt.Println()
	}
	fmt.Printf("%d/%d pairs answered\n", good, total)
	for _, r := range rs {
		if r.Err != nil {
			fmt.Printf("  %s (%s) → %s (%s): %v\n", r.From, r.From.Addr, r.To, r.To.Addr, r.Err)
		}
	}
	return good == total
}

// allDirect reports an error naming a host that still relays to a peer.
func allDirect(hs []*testbed.Host) error {
	for _, h := range hs {
		st, err := h.StatusErr()
		if err != nil {
			return err
		}
		for _, c := range st.Conns {
			if c.Peer != "" && c.State == api.StateEstablished && !c.Direct {
				return fmt.Errorf("%s reaches %s relayed", h, c.Nickname)
			}
		}
	}
	return nil
}
