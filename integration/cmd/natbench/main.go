// Command natbench measures how long two peers behind easy (endpoint-
// independent) NATs take to go from both launched to a direct path, the
// `make bench` line of NAT traversal. It builds a public hub and two easy
// NAT routers with one host each out of network namespaces, launches both
// NATed hosts together, and times until each sees the other direct; then
// relaunches them for the next round. A benchmark, not a test: it reports,
// beside the target (< 5 s), and fails only if it could not measure.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// target is the figure for easy↔easy.
const target = 5 * time.Second

type result struct {
	Rounds  []float64 `json:"rounds_seconds"`
	Median  float64   `json:"median_seconds"`
	Target  float64   `json:"target_seconds"`
	Path    string    `json:"path"`
	Elapsed float64   `json:"elapsed_seconds"`
}

func main() {
	rounds := flag.Int("rounds", 3, "how many times to launch the two NATed peers")
	asJSON := flag.Bool("json", false, "print the result as JSON")
	verbose := flag.Bool("v", false, "show every test-bed step")
	flag.Parse()
	os.Exit(testbed.RunProgram(*verbose, func(p *testbed.Program) bool { return run(p, *rounds, *asJSON) }))
}

func run(tb *testbed.Program, rounds int, asJSON bool) bool {
	start := time.Now()
	if err := testbed.Check(); err != nil {
		tb.Fatalf("%v", err)
	}
	dir, err := os.MkdirTemp("", "weavewg-natbench-")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if _, err := testbed.BuildBinary(dir); err != nil {
		tb.Fatalf("building weavewg: %v", err)
	}
	bed := testbed.New(tb, testbed.Options{LogLevel: "info", Quiet: true})
	hub := bed.AddHost(testbed.HostOptions{NoPeers: true})
	n1 := bed.AddNAT(testbed.NATEasy, 101, 0)
	n2 := bed.AddNAT(testbed.NATEasy, 102, 1)
	e1 := bed.AddHostBehind(n1, testbed.HostOptions{Peers: []string{hub.UnderlayIP}, NoLaunch: true})
	e2 := bed.AddHostBehind(n2, testbed.HostOptions{Peers: []string{hub.UnderlayIP}, NoLaunch: true})

	res := result{Target: target.Seconds()}
	for r := 0; r < rounds; r++ {
		if r > 0 {
			for _, h := range []*testbed.Host{e1, e2} {
				if err := h.Stop(); err != nil {
					tb.Fatalf("stopping %s: %v", h, err)
				}
			}
		}
		fmt.Fprintf(os.Stderr, "round %d: launching %s and %s behind two easy NATs …\n", r+1, e1, e2)
		var wg sync.WaitGroup
		for _, h := range []*testbed.Host{e1, e2} {
			wg.Go(h.Launch)
		}
		wg.Wait()
		up := time.Now()
		var took [2]time.Duration
		var errs [2]error
		for i, pair := range [][2]*testbed.Host{{e1, e2}, {e2, e1}} {
			wg.Go(func() {
				_, errs[i] = pair[0].WaitPath(pair[1].Name, "direct", 60*time.Second)
				took[i] = time.Since(up)
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				fmt.Fprintf(os.Stderr, "round %d: no direct path: %v\n", r+1, err)
				return false
			}
		}
		res.Rounds = append(res.Rounds, max(took[0], took[1]).Seconds())
	}
	st := e1.Status()
	for _, c := range st.Conns {
		if c.Nickname == e2.Name && c.Candidate != "" {
			res.Path = "direct (ice " + c.Candidate + ")"
		}
	}
	sorted := slices.Clone(res.Rounds)
	slices.Sort(sorted)
	res.Median = sorted[len(sorted)/2]
	res.Elapsed = time.Since(start).Seconds()
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
		return true
	}
	var rs []string
	for _, s := range res.Rounds {
		rs = append(rs, fmt.Sprintf("%.1f", s))
	}
	verdict := "ok"
	if res.Median >= target.Seconds() {
		verdict = "short"
	}
	fmt.Printf("\nNAT traversal, easy NAT ↔ easy NAT: seconds from both peers up to a direct path\n")
	fmt.Printf("  rounds %s s, median %.1f s (target < %.0f s) %s; path %s\n", strings.Join(rs, " "), res.Median, target.Seconds(), verdict, res.Path)
	return true
}
