package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// IperfResult is one iperf3 TCP run between two namespaces.
type IperfResult struct {
	SentMbps     float64 `json:"sent_mbps"`     // by the client
	ReceivedMbps float64 `json:"received_mbps"` // by the server
	Retransmits  int     `json:"retransmits"`   // TCP retransmits the client counted
	Seconds      float64 `json:"seconds"`
}

// Iperf3 runs a one-off iperf3 server in to's namespace and a client in
// from's for dur (one TCP stream), and returns what the client's JSON
// report says. The client starts once the server says it listens; both
// processes are killed if they outlive dur by 30 s.
func Iperf3(from, to *Container, port int, dur time.Duration) (IperfResult, error) {
	var res IperfResult
	var out []byte
	var err error
	for try := 0; try < 3; try++ {
		if out, err = iperf3Once(from, to, port, dur); err == nil || !strings.Contains(string(out), "unable to connect") {
			break
		}
	}
	var rep struct {
		End struct {
			SumSent struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
				Retransmits   int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		if err == nil {
			err = jerr
		}
		return res, fmt.Errorf("iperf3 %s → %s: %v: %.300s", from, to, err, out)
	}
	if rep.Error != "" {
		return res, fmt.Errorf("iperf3 %s → %s: %s", from, to, rep.Error)
	}
	res.SentMbps = rep.End.SumSent.BitsPerSecond / 1e6
	res.ReceivedMbps = rep.End.SumReceived.BitsPerSecond / 1e6
	res.Retransmits = rep.End.SumSent.Retransmits
	res.Seconds = rep.End.SumSent.Seconds
	return res, nil
}

// iperf3Once starts the server, waits up to 15 s for it to listen, and
// runs the client; it returns the client's output.
func iperf3Once(from, to *Container, port int, dur time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	defer cancel()
	srv := nsCmd(ctx, to.Netns, "iperf3", "-s", "-1", "-B", to.Addr, "-p", strconv.Itoa(port), "--forceflush")
	var srvOut syncBuffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("iperf3 server in %s: %w", to, err)
	}
	defer func() { cancel(); srv.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(srvOut.String(), "Server listening") {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("iperf3 server in %s did not listen within 15 s: %.300s", to, srvOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cli := nsCmd(ctx, from.Netns, "iperf3", "-c", to.Addr, "-p", strconv.Itoa(port),
		"-t", strconv.Itoa(int(dur.Seconds())), "-J", "--connect-timeout", "5000")
	return cli.Output()
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// nsCmd is `ip netns exec NS name args...` in its own process group,
// killed with the group when ctx ends.
func nsCmd(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}
