// Package netnstest gives tests throwaway network namespaces: made with a
// unique name (other tests run on the same machine at the same time),
// deleted at cleanup, swept when the process that made them died before
// its cleanup ran, and a way to run code on a thread inside one.
package netnstest

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// RequireNetAdmin skips a test that needs root, /dev/net/tun and ip(8).
func RequireNetAdmin(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, a TUN device, bridges and veths")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
}

// Run runs a command and fails the test if it fails; it returns the output.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NS is one named network namespace (ip netns).
type NS struct {
	Name string         // for ip -n
	Path string         // /var/run/netns/Name
	H    netns.NsHandle // open until cleanup
}

// ownedName matches the names of namespaces made by New and by the
// integration test bed: "wwg<owner PID>-<4 hex>-...". The owner's PID is in
// the name so that a run killed before its cleanup (a CI timeout, ^C) leaves
// namespaces the next run can tell from those of runs still going.
var ownedName = regexp.MustCompile(`^wwg(\d+)-[0-9a-f]{4}-`)

// Stale reports whether name is an owned name (above) whose owner is dead.
// Names of this process and of other live processes are not stale, so
// concurrent runs on one machine never delete each other's namespaces.
func Stale(name string) bool {
	m := ownedName.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid == os.Getpid() {
		return false
	}
	_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err != nil
}

var (
	made      atomic.Uint32 // namespaces New made in this process: the 4 hex of the name
	sweepOnce sync.Once
)

// sweep deletes the stale namespaces of earlier runs, once per process.
func sweep(t testing.TB) {
	sweepOnce.Do(func() {
		entries, _ := os.ReadDir("/var/run/netns")
		for _, e := range entries {
			if !Stale(e.Name()) {
				continue
			}
			// A test bed's namespace may still hold its dead run's daemons:
			// deleting the name would hide them from the test bed's Sweep,
			// which kills them first.
			if out, err := exec.Command("ip", "netns", "pids", e.Name()).Output(); err != nil || len(bytes.TrimSpace(out)) > 0 {
				continue
			}
			t.Logf("netnstest: deleting namespace %s, left by a run that died", e.Name())
			exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	})
}

// New makes a namespace named "wwg<PID>-<n>-role" (n counts this process's
// namespaces, in hex) with lo up; it is deleted when the test ends, or by
// the next run's sweep if this process dies first.
func New(t testing.TB, role string) *NS {
	t.Helper()
	sweep(t)
	name := fmt.Sprintf("wwg%d-%04x-%s", os.Getpid(), uint16(made.Add(1)), role)
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return &NS{Name: name, Path: "/var/run/netns/" + name, H: h}
}

// Do runs f on a thread in ns. The goroutine ends with its thread locked,
// so the runtime retires the thread and its namespace never leaks into
// other goroutines.
func Do(ns *NS, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns.H); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

// Logger logs to t until the test ends; goroutines that log after that
// (wireguard-go's) are dropped.
func Logger(t *testing.T, prefix string) *slog.Logger {
	w := &testWriter{t: t, prefix: prefix}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu     sync.Mutex
	t      *testing.T
	prefix string
	done   bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(w.prefix + string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}
