package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The daemon has no pprof endpoint, so --profile samples the tunnel
// processes from outside with perf (Go binaries keep frame pointers and
// symbols, so perf resolves Go functions).

// Profile is the top of a perf report of the tunnel processes.
type Profile struct {
	Path string   `json:"path"` // perf.data file
	Top  []string `json:"top"`  // "12.34%  comm  symbol"
	Err  string   `json:"error,omitempty"`
}

type perfRun struct {
	path string
	cmd  *exec.Cmd
	done chan error
}

// startPerf records CPU samples with call graphs of pids for dur into
// DIR/perf-KEY.data.
func startPerf(dir, key string, pids []int, dur time.Duration) *perfRun {
	os.MkdirAll(dir, 0o755)
	path, _ := filepath.Abs(filepath.Join(dir, "perf-"+key+".data"))
	var ps []string
	for _, p := range pids {
		ps = append(ps, strconv.Itoa(p))
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	cmd := exec.CommandContext(ctx, "perf", "record", "-q", "-F", "997", "-g", "-o", path,
		"-p", strings.Join(ps, ","), "--", "sleep", strconv.FormatFloat(dur.Seconds(), 'f', -1, 64))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout = io.Discard
	r := &perfRun{path: path, cmd: cmd, done: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		cancel()
		r.done <- err
		return r
	}
	go func() { r.done <- cmd.Wait(); cancel() }()
	return r
}

// finish waits for perf and summarises the report: the functions with the
// most samples of their own (no children).
func (r *perfRun) finish() *Profile {
	p := &Profile{Path: r.path}
	if err := <-r.done; err != nil {
		// perf ends on SIGTERM when the processes it follows exit before
		// its sleep does (the iperf3 ones of the kernel paths), after
		// writing its file: only a missing or empty file is a failure.
		if st, serr := os.Stat(r.path); serr != nil || st.Size() == 0 {
			p.Err = fmt.Sprintf("perf record: %v", err)
			return p
		}
	}
	out, err := exec.Command("perf", "report", "-i", r.path, "--stdio", "--no-children",
		"--sort", "comm,symbol", "-g", "none", "--percent-limit", "1.5").Output()
	if err != nil {
		p.Err = fmt.Sprintf("perf report: %v", err)
		return p
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		p.Top = append(p.Top, strings.Join(strings.Fields(l), " "))
		if len(p.Top) == 20 {
			break
		}
	}
	return p
}

func printProfile(w io.Writer, r Result) {
	fmt.Fprintf(w, "\n(%s) %s: perf profile of the tunnel processes (of iperf3 on v, t, u), 1-stream run (%s)\n", r.Key, r.Name, r.Profile.Path)
	if r.Profile.Err != "" {
		fmt.Fprintf(w, "  %s\n", r.Profile.Err)
	}
	for _, l := range r.Profile.Top {
		fmt.Fprintf(w, "  %s\n", l)
	}
}
