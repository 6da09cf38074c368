package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/internal/netnstest"
)

// Check says why the test bed cannot run here, or nil: it needs root, the
// `ip` command and /dev/net/tun.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("testbed needs root (network namespaces, TUN)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("testbed needs the ip command (iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("testbed needs /dev/net/tun: %v", err)
	}
	return nil
}

func requireEnv(tb TB) {
	tb.Helper()
	if err := Check(); err != nil {
		tb.Fatalf("testbed: %v", err)
	}
}

// run runs a command and returns its combined output; the error carries the
// command line and output.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func listNetns() ([]string, error) {
	ents, err := os.ReadDir("/var/run/netns")
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// NetnsPath is where `ip netns` keeps a namespace.
func NetnsPath(name string) string { return filepath.Join("/var/run/netns", name) }

// deleteNetns kills every process in the namespace and deletes it; a
// namespace already gone is fine.
func deleteNetns(tb TB, name string) {
	if _, err := os.Stat(NetnsPath(name)); err != nil {
		return
	}
	killNetnsPids(name)
	if _, err := run("ip", "netns", "del", name); err != nil {
		tb.Logf("testbed: cleanup: %v", err)
	}
}

func killNetnsPids(name string) {
	out, _ := run("ip", "netns", "pids", name)
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// Wait briefly so the namespace's devices are really gone before the
	// caller goes on (a dying daemon still holds its TUN).
	deadline := time.Now().Add(3 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
			if isZombie(pid) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func isZombie(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

// Sweep removes namespaces and temporary directories left by earlier runs
// that were killed before they could clean up. Only those whose owning
// process (its PID is in the name) is dead are touched, so concurrent runs on
// the same machine are safe.
func Sweep(tb TB) {
	names, _ := listNetns()
	for _, n := range names {
		if netnstest.Stale(n) {
			tb.Logf("testbed: sweeping stale namespace %s", n)
			deleteNetns(tb, n)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "wwg*"))
	for _, d := range dirs {
		if netnstest.Stale(filepath.Base(d)) {
			os.RemoveAll(d)
		}
	}
}

// InNetns runs f on an OS thread that has entered the named namespace, so
// sockets f creates live there (they stay there when used from other
// goroutines later). The thread is thrown away afterwards.
func InNetns(ns string, f func() error) error {
	fd, err := unix.Open(NetnsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer unix.Close(fd)
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the goroutine exits with the thread locked, so the
		// runtime terminates the thread instead of reusing it in ns.
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
