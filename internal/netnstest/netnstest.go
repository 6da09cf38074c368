// Package netnstest gives tests throwaway network namespaces: made with a
// unique name (other tests run on the same machine at the same time),
// deleted at cleanup, and a way to run code on a thread inside one.
package netnstest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
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

// New makes a namespace named "wwgt-<random>-role" with lo up; it is
// deleted when the test ends.
func New(t testing.TB, role string) *NS {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	name := "wwgt-" + hex.EncodeToString(b[:]) + "-" + role
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
