// Command natbench measures NAT traversal, the `make bench` lines of issues
// 8 and 12. It builds a public hub and, behind routers of their own, two
// hosts behind idealised endpoint-independent NATs and two behind stock
// Linux masquerade routers (testbed.NATIdealEIM, testbed.NATStock). Each
// round launches one pair together and times:
//
//   - ideal EIM ↔ ideal EIM: both launched → both sides direct (target < 5 s);
//   - stock ↔ stock: both launched and a container attached on each → the
//     first ping reply between the containers (time to first reply), and →
//     both sides direct (time to direct; "never: relayed" when the pair
//     stayed relayed for 60 s, which two stock routers one hop apart always
//     impose: see docs/architecture.md, NAT traversal, Limits).
//
// A benchmark, not a test: it reports, beside the targets, and fails only if
// it could not measure.
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

// target is the figure for a direct path between two easy NATs and
// for a first reply.
const target = 5 * time.Second

// directWait is how long a round waits for a direct path.
const directWait = 60 * time.Second

type series struct {
	Rounds []float64 `json:"rounds_seconds"` // -1: not reached
	Median float64   `json:"median_seconds"`
}

type result struct {
	IdealToDirect     series  `json:"ideal_eim_to_direct"`
	StockToFirstReply series  `json:"stock_to_first_reply"`
	StockToDirect     series  `json:"stock_to_direct"`
	Target            float64 `json:"target_seconds"`
	IdealPath         string  `json:"ideal_path"`
	StockPath         string  `json:"stock_path"`
	Elapsed           float64 `json:"elapsed_seconds"`
}

func main() {
	rounds := flag.Int("rounds", 3, "how many times to launch each pair of NATed peers")
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
	peers := []string{hub.UnderlayIP}
	behind := func(kind testbed.NATKind, octet, index int) *testbed.Host {
		return bed.AddHostBehind(bed.AddNAT(kind, octet, index), testbed.HostOptions{Peers: peers, NoLaunch: true})
	}
	e1, e2 := behind(testbed.NATIdealEIM, 101, 0), behind(testbed.NATIdealEIM, 102, 1)
	s1, s2 := behind(testbed.NATStock, 103, 2), behind(testbed.NATStock, 104, 3)

	res := result{Target: target.Seconds()}
	var ctrs [2]*testbed.Container
	for r := 0; r < rounds; r++ {
		fmt.Fprintf(os.Stderr, "round %d: launching %s and %s behind two ideal EIM NATs …\n", r+1, e1, e2)
		up := launchPair(e1, e2)
		d, ok := timeToDirect(e1, e2, up)
		if !ok {
			fmt.Fprintf(os.Stderr, "round %d: ideal EIM pair not direct within %v\n", r+1, directWait)
			return false
		}
		res.IdealToDirect.Rounds = append(res.IdealToDirect.Rounds, d)
		res.IdealPath = pathText(e1, e2)
		stopPair(tb, e1, e2)

		fmt.Fprintf(os.Stderr, "round %d: launching %s and %s behind two stock masquerade routers …\n", r+1, s1, s2)
		launchPair(s1, s2)
		if r == 0 {
			for i, h := range []*testbed.Host{s1, s2} {
				if ctrs[i], err = h.AddContainerErr(""); err != nil {
					tb.Fatalf("container on %s: %v", h, err)
				}
			}
		}
		up = time.Now()
		took, err := ctrs[0].FirstReply(ctrs[1].Addr, 30*time.Second)
		if err != nil {
			fmt.Fprintf(os.Stderr, "round %d: %v\n", r+1, err)
			return false
		}
		res.StockToFirstReply.Rounds = append(res.StockToFirstReply.Rounds, took.Seconds())
		d, ok = timeToDirect(s1, s2, up)
		if !ok {
			d = -1
		}
		res.StockToDirect.Rounds = append(res.StockToDirect.Rounds, d)
		res.StockPath = pathText(s1, s2)
		stopPair(tb, s1, s2)
	}
	for _, s := range []*series{&res.IdealToDirect, &res.StockToFirstReply, &res.StockToDirect} {
		sorted := slices.Clone(s.Rounds)
		slices.Sort(sorted)
		s.Median = sorted[len(sorted)/2]
	}
	res.Elapsed = time.Since(start).Seconds()
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
		return true
	}
	fmt.Printf("\nNAT traversal (seconds; median of %d rounds; never: still relayed after %v)\n", rounds, directWait)
	fmt.Printf("  ideal EIM ↔ ideal EIM, launch → direct:      %s (target < %.0f s) %s\n", seriesText(res.IdealToDirect), target.Seconds(), verdict(res.IdealToDirect))
	fmt.Printf("  stock ↔ stock, up → first reply:             %s (target < %.0f s) %s\n", seriesText(res.StockToFirstReply), target.Seconds(), verdict(res.StockToFirstReply))
	fmt.Printf("  stock ↔ stock, up → direct:                  %s%s\n", seriesText(res.StockToDirect), stockDirectNote(res.StockToDirect))
	fmt.Printf("  paths at the end: ideal %s; stock %s\n", res.IdealPath, res.StockPath)
	return true
}

// launchPair launches a and b together and returns when both APIs answer.
func launchPair(a, b *testbed.Host) time.Time {
	var wg sync.WaitGroup
	for _, h := range []*testbed.Host{a, b} {
		wg.Go(h.Launch)
	}
	wg.Wait()
	return time.Now()
}

func stopPair(tb *testbed.Program, a, b *testbed.Host) {
	for _, h := range []*testbed.Host{a, b} {
		if err := h.Stop(); err != nil {
			tb.Fatalf("stopping %s: %v", h, err)
		}
	}
}

// timeToDirect waits until a and b each see the other direct and returns
// the seconds since from.
func timeToDirect(a, b *testbed.Host, from time.Time) (float64, bool) {
	var wg sync.WaitGroup
	var errs [2]error
	for i, pair := range [][2]*testbed.Host{{a, b}, {b, a}} {
		wg.Go(func() { _, errs[i] = pair[0].WaitPath(pair[1].Name, "direct", directWait) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		return 0, false
	}
	return time.Since(from).Seconds(), true
}

func pathText(a, b *testbed.Host) string {
	st, err := a.StatusErr()
	if err != nil {
		return "stopped"
	}
	for _, c := range st.Conns {
		if c.Nickname == b.Name {
			switch {
			case c.Via != "":
				return "relayed via " + c.Via
			case c.Candidate != "":
				return "direct (ice " + c.Candidate + ")"
			case c.Direct:
				return "direct"
			}
		}
	}
	return "none"
}

func seriesText(s series) string {
	var rs []string
	for _, v := range s.Rounds {
		rs = append(rs, secondsText(v))
	}
	return fmt.Sprintf("rounds %s, median %s", strings.Join(rs, " "), secondsText(s.Median))
}

// secondsText is a round's figure; a negative one was not reached.
func secondsText(v float64) string {
	if v < 0 {
		return "never: relayed"
	}
	return fmt.Sprintf("%.1f", v)
}

// stockDirectNote says why stock ↔ stock stays relayed here, when it does.
func stockDirectNote(s series) string {
	if s.Median >= 0 {
		return ""
	}
	return " (expected: each router takes the other's first datagram as unsolicited and gives its own host's flow another port; docs/architecture.md, NAT traversal, Limits)"
}

func verdict(s series) string {
	if s.Median < 0 || s.Median >= target.Seconds() {
		return "short"
	}
	return "ok"
}
