// Command mtubench measures container-to-container TCP throughput over
// underlays with a smaller MTU, the `make bench` line of path MTU: for
// each link MTU (1500, then Google Cloud's 1460 and a tunnelled
// interconnect's 1380) it builds two namespace hosts on links of that MTU,
// launched with default flags, one container each, and runs iperf3 (one TCP
// stream) between the containers. Each smaller MTU is reported as a ratio
// against the 1500 run of the same invocation (target ≥ 0.8), with the
// retransmits. A benchmark, not a test: it fails only if it could not
// measure.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// target is the figure: throughput on a smaller underlay MTU
// against the same run on 1500.
const target = 0.8

type run struct {
	LinkMTU   int                 `json:"link_mtu"`
	TunnelMTU int                 `json:"tunnel_mtu"` // as status reports it
	Iperf     testbed.IperfResult `json:"iperf3"`
	Ratio     float64             `json:"ratio_to_1500"`
}

func main() {
	mtus := flag.String("mtus", "1500,1460,1380", "link MTUs to measure, the first one is the baseline")
	secs := flag.Int("t", 5, "seconds per iperf3 run")
	asJSON := flag.Bool("json", false, "print the result as JSON")
	verbose := flag.Bool("v", false, "show every test-bed step")
	flag.Parse()
	var list []int
	for _, s := range strings.Split(*mtus, ",") {
		m, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || m < 576 || m > 9000 {
			fmt.Fprintf(os.Stderr, "mtubench: bad MTU %q in --mtus\n", s)
			os.Exit(2)
		}
		list = append(list, m)
	}
	os.Exit(testbed.RunProgram(*verbose, func(p *testbed.Program) bool {
		return measure(p, list, time.Duration(*secs)*time.Second, *asJSON)
	}))
}

func measure(tb *testbed.Program, mtus []int, dur time.Duration, asJSON bool) bool {
	if err := testbed.Check(); err != nil {
		tb.Fatalf("%v", err)
	}
	dir, err := os.MkdirTemp("", "weavewg-mtubench-")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if _, err := testbed.BuildBinary(dir); err != nil {
		tb.Fatalf("building weavewg: %v", err)
	}
	var runs []run
	for _, mtu := range mtus {
		fmt.Fprintf(os.Stderr, "link MTU %d: two hosts, one container each, iperf3 %s …\n", mtu, dur)
		r, ok := one(tb, mtu, dur)
		if !ok {
			return false
		}
		if len(runs) > 0 && runs[0].Iperf.ReceivedMbps > 0 {
			r.Ratio = r.Iperf.ReceivedMbps / runs[0].Iperf.ReceivedMbps
		} else if len(runs) == 0 {
			r.Ratio = 1
		}
		runs = append(runs, r)
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(map[string]any{"target_ratio": target, "runs": runs})
		return true
	}
	fmt.Printf("\nContainer TCP over smaller underlay MTUs (iperf3, 1 stream, %s; ratio against link MTU %d, target ≥ %.1f)\n", dur, mtus[0], target)
	for i, r := range runs {
		verdict := "baseline"
		if i > 0 {
			verdict = "ok"
			if r.Ratio < target {
				verdict = "short"
			}
		}
		fmt.Printf("  link %4d, tunnel %4d: %8.1f Mbit/s received, %5d retransmits, ratio %.2f %s\n",
			r.LinkMTU, r.TunnelMTU, r.Iperf.ReceivedMbps, r.Iperf.Retransmits, r.Ratio, verdict)
	}
	return true
}

// one measures one link MTU in a bed of its own, torn down before the next.
func one(p *testbed.Program, mtu int, dur time.Duration) (run, bool) {
	r := run{LinkMTU: mtu}
	bed := testbed.New(p, testbed.Options{LogLevel: "info", Quiet: true})
	h1 := bed.AddHostWithMTU(mtu, testbed.HostOptions{NoPeers: true})
	h2 := bed.AddHostWithMTU(mtu, testbed.HostOptions{})
	// The next run's bed is made beside this one: stop these daemons so
	// they cost nothing while it measures (the namespaces go at the end).
	defer func() {
		for _, h := range []*testbed.Host{h1, h2} {
			if err := h.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "stopping %s: %v\n", h, err)
			}
		}
	}()
	bed.WaitMesh(60 * time.Second)
	c1, c2 := h1.AddContainer(), h2.AddContainer()
	if err := c1.PingEventually(c2.Addr, 30*time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "link MTU %d: %v\n", mtu, err)
		return r, false
	}
	r.TunnelMTU = h1.Status().MTU
	res, err := testbed.Iperf3(c1, c2, 5201, dur)
	if err != nil {
		fmt.Fprintf(os.Stderr, "link MTU %d: %v\n", mtu, err)
		return r, false
	}
	r.Iperf = res
	return r, true
}
