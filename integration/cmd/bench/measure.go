package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// nsCommand is `ip netns exec NS name args...` in a process group of its
// own (a Ctrl-C at the terminal reaches the bench, which tears down in
// order), killed with its group when ctx ends.
func nsCommand(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Throughput is one iperf3 TCP run.
type Throughput struct {
	Streams      int     `json:"streams"`
	Seconds      float64 `json:"seconds"`
	Gbps         float64 `json:"gbps"`         // received by the server
	SentGbps     float64 `json:"sent_gbps"`    // sent by the client
	Retransmits  int     `json:"retransmits"`  // TCP retransmits seen by the sender
	SenderCPU    float64 `json:"sender_cpu"`   // iperf3's own CPU %, client side
	ReceiverCPU  float64 `json:"receiver_cpu"` // iperf3's own CPU %, server side
	TunnelCPU    float64 `json:"tunnel_cpu"`   // CPU of the tunnel processes at both ends, % of one core (-1: none)
	TunnelCPUPer float64 `json:"tunnel_cpu_s_per_gb,omitempty"`
	TunnelBytes  uint64  `json:"tunnel_bytes,omitempty"` // bytes wireguard-go counted at the sender (b only)
	Err          string  `json:"error,omitempty"`
}

// iperf3 runs a one-off server in dstNS on dst:port and a client in srcNS
// for dur with streams parallel streams. tunnelPIDs are the processes whose
// CPU time is charged to the path (none for the raw underlay). onStart, if
// not nil, is given the server's and the client's pids once both run.
func iperf3(srcNS, dstNS, dst string, port int, dur time.Duration, streams int, tunnelPIDs []int, onStart func([]int)) (Throughput, error) {
	res := Throughput{Streams: streams, TunnelCPU: -1}
	// Bounded lifetime: the server handles one client (-1) and is killed
	// with its process group if anything hangs.
	life := dur + 31*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), life)
	defer cancel()
	srv := nsCommand(ctx, dstNS, "iperf3", "-s", "-1", "-B", dst, "-p", strconv.Itoa(port),
		"--idle-timeout", strconv.Itoa(int(life.Seconds())), "--forceflush")
	var srvOut lockedBuffer
	pr, pw := io.Pipe()
	srv.Stdout = pw
	srv.Stderr = &srvOut
	if err := srv.Start(); err != nil {
		return res, fmt.Errorf("iperf3 server: %w", err)
	}
	srvDone := make(chan error, 1)
	go func() { err := srv.Wait(); pw.Close(); srvDone <- err }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		signalled := false
		for sc.Scan() {
			srvOut.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "Server listening") {
				signalled = true
				close(ready)
			}
		}
		if !signalled {
			close(ready)
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		return res, fmt.Errorf("iperf3 server in %s did not start listening: %s", dstNS, srvOut.String())
	}

	// The CPU of the tunnel processes is counted over the measured part of
	// the run: iperf3 omits the first second (-O 1, slow start) from its
	// figures, so counting starts a second in.
	type mark struct {
		ticks int64
		at    time.Time
	}
	first := make(chan mark, 1)
	go func() {
		time.Sleep(time.Second)
		first <- mark{cpuTicks(tunnelPIDs), time.Now()}
	}()
	cli := nsCommand(ctx, srcNS, "iperf3", "-c", dst, "-p", strconv.Itoa(port),
		"-t", strconv.FormatFloat(dur.Seconds(), 'f', -1, 64), "-P", strconv.Itoa(streams),
		"-O", "1", "-J", "--connect-timeout", "5000")
	var cliOut bytes.Buffer
	cli.Stdout = &cliOut
	err := cli.Start()
	if err == nil {
		if onStart != nil {
			onStart([]int{srv.Process.Pid, cli.Process.Pid})
		}
		err = cli.Wait()
	}
	out := cliOut.Bytes()
	cpu1 := cpuTicks(tunnelPIDs)
	m0 := <-first
	cpu0, wall := m0.ticks, time.Since(m0.at)
	select {
	case <-srvDone:
	case <-time.After(5 * time.Second):
		syscall.Kill(-srv.Process.Pid, syscall.SIGKILL)
		<-srvDone
	}
	var j struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
				Retransmits   int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
			CPU struct {
				HostTotal   float64 `json:"host_total"`
				RemoteTotal float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &j); jerr != nil {
		return res, fmt.Errorf("iperf3 client: %v (%v): %s", err, jerr, firstLines(string(out), 5))
	}
	if j.Error != "" {
		return res, fmt.Errorf("iperf3: %s", j.Error)
	}
	if err != nil {
		return res, fmt.Errorf("iperf3 client: %v", err)
	}
	res.Seconds = j.End.SumReceived.Seconds
	res.Gbps = j.End.SumReceived.BitsPerSecond / 1e9
	res.SentGbps = j.End.SumSent.BitsPerSecond / 1e9
	res.Retransmits = j.End.SumSent.Retransmits
	res.SenderCPU = j.End.CPU.HostTotal
	res.ReceiverCPU = j.End.CPU.RemoteTotal
	if len(tunnelPIDs) > 0 && cpu0 >= 0 && cpu1 >= 0 {
		sec := float64(cpu1-cpu0) / clockTicks
		res.TunnelCPU = 100 * sec / wall.Seconds()
		if gb := j.End.SumReceived.Bytes / 1e9; gb > 0 {
			res.TunnelCPUPer = sec / gb
		}
	}
	return res, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// cpuTicks sums utime+stime of the processes (all their threads); -1 if any
// is unreadable.
func cpuTicks(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return -1
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			return -1
		}
		f := strings.Fields(s[i+1:])
		// After the comm field: state is f[0], utime is field 14 → f[11], stime f[12].
		if len(f) < 13 {
			return -1
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		sum += u + st
	}
	return sum
}

// Latency is one ping run.
type Latency struct {
	Sent     int     `json:"sent"`
	Received int     `json:"received"`
	Interval float64 `json:"interval_ms"`
	AvgMs    float64 `json:"avg_ms"`
	MinMs    float64 `json:"min_ms"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	Err      string  `json:"error,omitempty"`

	// FloodMinMs and FloodAvgMs are of a flood ping (ping -f: the next
	// request as soon as the reply is in) after the paced one: its minimum
	// is what one packet costs the path with every CPU awake, which a
	// shared machine's load hardly moves (the minimum is of the moments
	// it left alone). 0: not measured.
	FloodMinMs float64 `json:"flood_min_ms,omitempty"`
	FloodAvgMs float64 `json:"flood_avg_ms,omitempty"`
}

var floodSummary = regexp.MustCompile(`min/avg/max/mdev = ([0-9.]+)/([0-9.]+)/`)

// floodPing sends count echo requests from srcNS to dst back to back
// (ping -f) and fills l's flood figures.
func floodPing(l *Latency, srcNS, dst string, count int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := nsCommand(ctx, srcNS, "ping", "-n", "-q", "-f", "-c", strconv.Itoa(count), "-W", "1", dst).CombinedOutput()
	m := floodSummary.FindStringSubmatch(string(out))
	if m == nil {
		return fmt.Errorf("flood ping %s from %s: %v: %s", dst, srcNS, err, firstLines(string(out), 3))
	}
	l.FloodMinMs, _ = strconv.ParseFloat(m[1], 64)
	l.FloodAvgMs, _ = strconv.ParseFloat(m[2], 64)
	return nil
}

var pingTime = regexp.MustCompile(`icmp_seq=\d+ .*time=([0-9.]+) ms`)

// ping sends count echo requests from srcNS to dst at interval and returns
// the RTT statistics of the replies.
func ping(srcNS, dst string, count int, interval time.Duration) (Latency, error) {
	res := Latency{Sent: count, Interval: float64(interval) / 1e6}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count)*interval+20*time.Second)
	defer cancel()
	cmd := nsCommand(ctx, srcNS, "ping", "-n", "-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', -1, 64), "-W", "1", dst)
	out, err := cmd.CombinedOutput()
	var rtts []float64
	for _, m := range pingTime.FindAllStringSubmatch(string(out), -1) {
		if v, perr := strconv.ParseFloat(m[1], 64); perr == nil {
			rtts = append(rtts, v)
		}
	}
	res.Received = len(rtts)
	if len(rtts) == 0 {
		return res, fmt.Errorf("ping %s from %s: no replies (%v): %s", dst, srcNS, err, firstLines(string(out), 5))
	}
	sort.Float64s(rtts)
	var sum float64
	for _, v := range rtts {
		sum += v
	}
	res.AvgMs = sum / float64(len(rtts))
	res.MinMs = rtts[0]
	res.MaxMs = rtts[len(rtts)-1]
	res.P50Ms = percentile(rtts, 50)
	res.P99Ms = percentile(rtts, 99)
	return res, nil
}

// percentile of sorted values by the nearest-rank method.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// pingOnce reports whether one echo request from ns to dst is answered
// within a second.
func pingOnce(ns, dst string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := nsCommand(ctx, ns, "ping", "-n", "-q", "-c", "1", "-W", "1", dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", dst, ns, err, firstLines(string(out), 3))
	}
	return nil
}

func firstLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[:n]
	}
	return strings.Join(ls, " | ")
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) WriteString(s string) {
	l.Write([]byte(s))
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
