package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// Report is everything one run measured; --json prints it as is.
type Report struct {
	Started          string   `json:"started"`
	Elapsed          float64  `json:"elapsed_s"`
	CPUs             int      `json:"cpus"`
	LoadFrom         string   `json:"loadavg_start"`
	LoadTo           string   `json:"loadavg_end"`
	Seconds          float64  `json:"iperf3_seconds"`
	Pings            int      `json:"pings"`
	Interval         float64  `json:"ping_interval_ms"`
	MTU              int      `json:"mtu"`
	Rounds           int      `json:"rounds"`
	WireguardVersion string   `json:"wireguard_go_version,omitempty"`
	Paths            []Result `json:"paths"`
	Ratios           []Ratio  `json:"ratios"`
	Errors           []string `json:"errors,omitempty"`

	// RoundLoads is the 1-minute load average as each round began: the
	// per-round ratios of a shared machine read against it.
	RoundLoads []string `json:"round_loads,omitempty"`
	// Warnings are about what the figures may not mean (a binary built
	// unlike the reference, say); the paths were measured.
	Warnings []string `json:"warnings,omitempty"`
}

// Result is one path's figures (medians over rounds when there were several).
type Result struct {
	Key     string      `json:"key"` // a, b, c
	Name    string      `json:"name"`
	From    string      `json:"from"`
	To      string      `json:"to"`
	Ping    Latency     `json:"ping"`
	TCP1    *Throughput `json:"tcp_1_stream,omitempty"`
	TCPn    *Throughput `json:"tcp_parallel,omitempty"`
	Profile *Profile    `json:"profile,omitempty"`
	Rounds  []Result    `json:"rounds,omitempty"`
}

// Ratio is one quotient of two paths' figures with the target it is held
// to, if any. Nothing fails on it.
type Ratio struct {
	Name  string  `json:"name"`  // e.g. "c/b throughput 1 stream"
	Value float64 `json:"value"` // median of Rounds when there are several, else OfMedians
	// OfMedians is the quotient of the two paths' figures in the table.
	OfMedians float64 `json:"of_medians"`
	Target    string  `json:"target,omitempty"` // e.g. ">= 1.00"
	Met       *bool   `json:"met,omitempty"`
	// Rounds are the same quotient within each round (paths measured
	// minutes apart share less of the machine's load than paths of a round).
	Rounds []float64 `json:"rounds,omitempty"`
}

func ratios(rs map[string]*Result, rounds map[string][]Result) []Ratio {
	var out []Ratio
	add := func(num, den, what string, get func(*Result) (float64, bool), target string, ok func(float64) bool) {
		n, d := rs[num], rs[den]
		if n == nil || d == nil {
			return
		}
		x, okx := get(n)
		y, oky := get(d)
		if !okx || !oky || y == 0 {
			return
		}
		r := Ratio{Name: num + "/" + den + " " + what, Value: x / y, OfMedians: x / y, Target: target}
		if nr, dr := rounds[num], rounds[den]; len(nr) > 1 && len(nr) == len(dr) {
			var good []float64
			for i := range nr {
				x, okx := get(&nr[i])
				y, oky := get(&dr[i])
				if okx && oky && y != 0 {
					r.Rounds = append(r.Rounds, x/y)
					good = append(good, x/y)
				} else {
					r.Rounds = append(r.Rounds, 0)
				}
			}
			// Paths of one round ran seconds apart under the same load, so
			// the median of the per-round ratios is steadier than the ratio
			// of the medians, whose rounds may differ.
			if len(good) > 0 {
				sort.Float64s(good)
				r.Value = good[len(good)/2]
			}
		}
		if ok != nil {
			m := ok(r.Value)
			r.Met = &m
		}
		out = append(out, r)
	}
	tcp1 := func(r *Result) (float64, bool) { return r.TCP1.gbps() }
	tcpn := func(r *Result) (float64, bool) { return r.TCPn.gbps() }
	avg := func(r *Result) (float64, bool) { return r.Ping.AvgMs, r.Ping.Received > 0 }
	p50 := func(r *Result) (float64, bool) { return r.Ping.P50Ms, r.Ping.Received > 0 }
	p99 := func(r *Result) (float64, bool) { return r.Ping.P99Ms, r.Ping.Received > 0 }
	flood := func(r *Result) (float64, bool) { return r.Ping.FloodMinMs, r.Ping.FloodMinMs > 0 }
	atLeast1 := func(v float64) bool { return v >= 1.0 }
	within10 := func(v float64) bool { return v <= 1.10 }
	for _, den := range []string{"a", "b"} {
		var tgtT, tgtR string
		var okT, okR func(float64) bool
		if den == "b" {
			tgtT, okT = ">= 1.00", atLeast1 // issue 16
			tgtR, okR = "<= 1.10", within10
		}
		add("c", den, "throughput 1 stream", tcp1, tgtT, okT)
		add("c", den, "throughput parallel", tcpn, tgtT, okT)
		add("c", den, "RTT avg", avg, tgtR, okR)
		add("c", den, "RTT p50", p50, tgtR, okR)
		add("c", den, "RTT p99", p99, "", nil)
		add("c", den, "per packet (flood-ping min)", flood, "", nil)
	}
	// The like-for-like of c: the reference with the same container hops.
	add("c", "e", "throughput 1 stream", tcp1, "", nil)
	add("c", "e", "throughput parallel", tcpn, "", nil)
	add("c", "e", "RTT avg", avg, "", nil)
	add("c", "e", "RTT p50", p50, "", nil)
	add("c", "e", "per packet (flood-ping min)", flood, "", nil)
	add("e", "b", "throughput 1 stream", tcp1, "", nil)
	add("e", "b", "RTT avg", avg, "", nil)
	add("e", "b", "per packet (flood-ping min)", flood, "", nil)
	// The like-for-like of b (host to host, no container hops), when measured.
	add("d", "b", "throughput 1 stream", tcp1, "", nil)
	add("d", "b", "RTT avg", avg, "", nil)
	add("d", "b", "RTT p50", p50, "", nil)
	add("c", "d", "RTT p50", p50, "", nil)
	// Relayed (h1 → h2 → h3) against direct weavewg, issue 3's target.
	add("r", "c", "throughput 1 stream", tcp1, ">= 0.6", func(v float64) bool { return v >= 0.6 })
	add("r", "c", "throughput parallel", tcpn, "", nil)
	add("r", "c", "RTT avg", avg, "", nil)
	// The trusted fast path against the kernel's own VXLAN, issue 16's
	// target: like for like, with the same container hops (w), or host to
	// host (u against v); t/v also counts the containers' hops, which v
	// has not.
	atLeast09 := func(v float64) bool { return v >= 0.9 }
	add("t", "w", "throughput 1 stream", tcp1, ">= 0.90", atLeast09)
	add("t", "w", "throughput parallel", tcpn, "", nil)
	add("t", "w", "RTT avg", avg, "", nil)
	add("t", "w", "RTT p50", p50, "", nil)
	add("t", "w", "per packet (flood-ping min)", flood, "", nil)
	add("u", "v", "throughput 1 stream", tcp1, ">= 0.90", atLeast09)
	add("u", "v", "RTT avg", avg, "", nil)
	add("u", "v", "per packet (flood-ping min)", flood, "", nil)
	add("t", "v", "throughput 1 stream", tcp1, "", nil)
	add("t", "v", "RTT avg", avg, "", nil)
	add("w", "v", "throughput 1 stream", tcp1, "", nil)
	add("t", "c", "throughput 1 stream", tcp1, "", nil)
	// --compare: the other binary against this one, paired per round.
	add("C", "c", "throughput 1 stream", tcp1, "", nil)
	add("C", "c", "RTT avg", avg, "", nil)
	add("C", "c", "RTT p50", p50, "", nil)
	add("C", "c", "per packet (flood-ping min)", flood, "", nil)
	add("T", "t", "throughput 1 stream", tcp1, "", nil)
	add("T", "t", "RTT avg", avg, "", nil)
	add("T", "t", "per packet (flood-ping min)", flood, "", nil)
	// How much the reference itself costs against the wire, for context.
	add("b", "a", "throughput 1 stream", tcp1, "", nil)
	add("b", "a", "RTT avg", avg, "", nil)
	return out
}

func (t *Throughput) gbps() (float64, bool) {
	if t == nil || t.Err != "" || t.Gbps == 0 {
		return 0, false
	}
	return t.Gbps, true
}

func fmtGbps(t *Throughput) string {
	if t == nil {
		return "-"
	}
	if t.Err != "" {
		return "error"
	}
	return fmt.Sprintf("%.2f Gbit/s", t.Gbps)
}

func fmtCPU(t *Throughput) string {
	if t == nil || t.Err != "" || t.TunnelCPU < 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%% (%.1f s/GB)", t.TunnelCPU, t.TunnelCPUPer)
}

func printTable(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "\nweavewg bench — 2 namespace hosts on 192.0.2.0/24, tunnel MTU %d, %d CPUs, load %s → %s, %.0f s\n",
		rep.MTU, rep.CPUs, rep.LoadFrom, rep.LoadTo, rep.Elapsed)
	par := ""
	for _, p := range rep.Paths {
		if p.TCPn != nil {
			par = fmt.Sprintf(" and -P %d", p.TCPn.Streams)
			break
		}
	}
	rounds := ""
	if rep.Rounds > 1 {
		rounds = fmt.Sprintf("; medians of %d interleaved rounds", rep.Rounds)
	}
	fmt.Fprintf(w, "iperf3 TCP %.0f s, 1 stream%s; ping %d × %.0f ms%s\n\n", rep.Seconds, par, rep.Pings, rep.Interval, rounds)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdrPar := "TCP -P n"
	for _, p := range rep.Paths {
		if p.TCPn != nil {
			hdrPar = fmt.Sprintf("TCP -P %d", p.TCPn.Streams)
			break
		}
	}
	fmt.Fprintf(tw, "path\tfrom → to\tTCP 1 stream\tretr\t%s\ttunnel CPU (1 stream)\tRTT avg\tp50\tp99\tloss\tflood min\n", hdrPar)
	for _, p := range rep.Paths {
		retr := "-"
		if p.TCP1 != nil && p.TCP1.Err == "" {
			retr = fmt.Sprint(p.TCP1.Retransmits)
		}
		rtt, p50, p99, loss, flood := "error", "-", "-", "-", "-"
		if p.Ping.FloodMinMs > 0 {
			flood = fmt.Sprintf("%.3f ms", p.Ping.FloodMinMs)
		}
		if p.Ping.Received > 0 {
			rtt = fmt.Sprintf("%.3f ms", p.Ping.AvgMs)
			p50 = fmt.Sprintf("%.3f", p.Ping.P50Ms)
			p99 = fmt.Sprintf("%.3f", p.Ping.P99Ms)
			loss = fmt.Sprintf("%d/%d", p.Ping.Sent-p.Ping.Received, p.Ping.Sent)
		}
		fmt.Fprintf(tw, "(%s) %s\t%s → %s\t%s%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			p.Key, p.Name, p.From, p.To, fmtGbps(p.TCP1), spread(p.Rounds), retr, fmtGbps(p.TCPn), fmtCPU(p.TCP1), rtt, p50, p99, loss, flood)
	}
	tw.Flush()

	if len(rep.Ratios) > 0 {
		fmt.Fprintln(w)
		if rep.Rounds > 1 {
			fmt.Fprintln(w, "ratios: median of the per-round ratios (each round measures a, b, c back to back under the same load; even rounds in reverse order)")
			if len(rep.RoundLoads) > 0 {
				fmt.Fprintf(w, "load (1 min) as each round began: %s\n", strings.Join(rep.RoundLoads, " "))
			}
		}
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, r := range rep.Ratios {
			verdict := ""
			if r.Target != "" {
				tgt := strings.Replace(strings.Replace(r.Target, ">=", "≥", 1), "<=", "≤", 1)
				v := "short"
				if r.Met != nil && *r.Met {
					v = "ok"
				}
				verdict = fmt.Sprintf("(target %s)\t%s", tgt, v)
			}
			per := ""
			if len(r.Rounds) > 0 {
				var vs []string
				for _, v := range r.Rounds {
					vs = append(vs, fmt.Sprintf("%.2f", v))
				}
				per = fmt.Sprintf("per round %s; of the medians %.2f", strings.Join(vs, " "), r.OfMedians)
			}
			if verdict == "" {
				verdict = "\t"
			}
			fmt.Fprintf(tw, "%s\t%.2f\t%s\t%s\n", r.Name, r.Value, verdict, per)
		}
		tw.Flush()
	}
	for _, p := range rep.Paths {
		for _, t := range []*Throughput{p.TCP1, p.TCPn} {
			if t != nil && t.Err != "" {
				fmt.Fprintf(w, "(%s) iperf3 -P %d: %s\n", p.Key, t.Streams, t.Err)
			}
		}
		if p.Ping.Err != "" {
			fmt.Fprintf(w, "(%s) ping: %s\n", p.Key, p.Ping.Err)
		}
		if p.Key == "b" && p.TCP1 != nil && p.TCP1.TunnelBytes > 0 {
			fmt.Fprintf(w, "(b) wireguard-go h1 counted %.2f GB through its tunnel during the 1-stream run\n", float64(p.TCP1.TunnelBytes)/1e9)
		}
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "not measured: %s\n", firstLines(e, 3))
	}
	for _, e := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", e)
	}
	for _, p := range rep.Paths {
		if p.Profile != nil {
			printProfile(w, p)
		}
	}
	fmt.Fprintln(w, "\ntunnel CPU: user+system time of the tunnel processes at both ends (wireguard-go, or the weavewg daemons) during the run, in % of one core and CPU-seconds per GB received (kernel work in their own syscalls counts, softirq work charged elsewhere does not).")
	fmt.Fprintln(w, "flood min: the fastest round trip of a flood ping (ping -f) across the path: what one packet costs it with every CPU awake; the load of a shared machine moves it far less than throughput or paced RTT.")
	fmt.Fprintln(w, "A benchmark on a shared 2-core machine: figures are noisy, compare the ratios of one run. Nothing fails on a target.")
}

// spread is " [min–max]" of the one-stream throughput over the rounds.
func spread(rounds []Result) string {
	lo, hi := 0.0, 0.0
	n := 0
	for _, r := range rounds {
		g, ok := r.TCP1.gbps()
		if !ok {
			continue
		}
		if n == 0 || g < lo {
			lo = g
		}
		if n == 0 || g > hi {
			hi = g
		}
		n++
	}
	if n < 2 {
		return ""
	}
	return fmt.Sprintf(" [%.2f–%.2f]", lo, hi)
}
