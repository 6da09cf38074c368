// Command demo builds a weavewg mesh of three namespace hosts with two
// containers each, shows `weavewg status`, pings every container from every
// other one, prints the matrix, and tears everything down (also on Ctrl-C).
// It exits non-zero if anything failed. Run it as root: `make demo`.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

func main() {
	hosts := flag.Int("hosts", 3, "number of hosts")
	perHost := flag.Int("containers", 2, "containers per host")
	verbose := flag.Bool("v", false, "show every test-bed step")
	flag.Parse()
	code := testbed.RunProgram(*verbose, func(p *testbed.Program) bool { return run(p, *hosts, *perHost) })
	if code == 0 {
		fmt.Println("demo: all good")
	} else {
		fmt.Println("demo: FAILED")
	}
	os.Exit(code)
}

func run(tb *testbed.Program, nHosts, perHost int) bool {
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
