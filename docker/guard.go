package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The plugin guard: the plugin socket answers, at once, while the daemon
// is not running.
//
// dockerd retries a plugin it cannot reach for 15 s per call, whether the
// socket file is gone (a clean stop removed it) or stale (a crash left it):
// `docker run --net weavewg` then hangs and ends in a dial error that does
// not say what is wrong. So the daemon starts a small process, the guard
// (`weavewg docker-plugin-guard`, in a session of its own), that holds a
// copy of the listening socket and a pipe from the daemon. While the daemon
// lives the guard only waits. When the pipe closes, because the daemon
// exited or was killed, the guard accepts on the same socket (connections
// queued meanwhile included) and answers every driver call with an error
// that says the daemon is not running. The next daemon stops it (pid file
// beside the socket) before it listens itself; the guard also ends when the
// socket file is removed or replaced.

// ErrDaemonDown is what the guard answers Docker.
const ErrDaemonDown = "the weavewg daemon is not running on this host: start it with `weavewg launch` (its Docker plugin socket is answered by a guard until then)"

// GuardCommand is the weavewg subcommand that runs the guard.
const GuardCommand = "docker-plugin-guard"

// guardPidFile is where the guard of the plugin socket at path keeps its pid.
func guardPidFile(path string) string { return path + ".guard.pid" }

// StartGuard starts the guard for the plugin socket at path, served by ln,
// running exe (this binary). It returns the write end of the pipe, which
// the caller keeps open for as long as it serves ln: the guard takes over
// when it closes, also at the caller's exit. ln must not unlink the socket
// file when it closes (SetUnlinkOnClose(false)).
func StartGuard(exe, path string, ln *net.UnixListener) (*os.File, error) {
	lnFile, err := ln.File()
	if err != nil {
		return nil, fmt.Errorf("plugin guard: %w", err)
	}
	defer lnFile.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("plugin guard: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe, GuardCommand, "--socket", path)
	cmd.ExtraFiles = []*os.File{lnFile, r} // fd 3, fd 4
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	// Passing the socket (os.File.Fd) made it blocking, and O_NONBLOCK is
	// shared by every copy: a blocking accept would make ln.Close hang.
	if rc, rerr := ln.SyscallConn(); rerr == nil {
		rc.Control(func(fd uintptr) { syscall.SetNonblock(int(fd), true) })
	}
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("plugin guard: %w", err)
	}
	if err := os.WriteFile(guardPidFile(path), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		cmd.Process.Kill()
		w.Close()
		return nil, fmt.Errorf("plugin guard: %w", err)
	}
	go cmd.Wait() // reaped if it ends while we run
	return w, nil
}

// StopGuard stops the guard of the plugin socket at path, if one runs (a
// previous daemon's), and waits for it to go. A pid file whose process is
// not that socket's guard is only removed.
func StopGuard(path string) error {
	pf := guardPidFile(path)
	b, err := os.ReadFile(pf)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("plugin guard: %w", err)
	}
	defer os.Remove(pf)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return nil
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !isGuardCmdline(string(cmdline), path) {
		return nil // gone, or the pid is another process's now
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return nil
	}
	for range 100 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		if c, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || !isGuardCmdline(string(c), path) {
			return nil // a zombie has an empty cmdline
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("plugin guard pid %d did not stop", pid)
}

func isGuardCmdline(cmdline, path string) bool {
	args := strings.Split(strings.TrimRight(cmdline, "\x00"), "\x00")
	return len(args) == 4 && args[1] == GuardCommand && args[3] == path
}

// RunGuard is the guard process: ln is the plugin socket's listener (fd 3),
// parent the pipe from the daemon (fd 4). It returns when the socket file
// at path is removed or replaced, or ctx ends.
func RunGuard(ctx context.Context, path string, ln net.Listener, parent io.Reader) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fmt.Errorf("plugin guard: %w", err)
	}
	ino := st.Ino
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, parent) // EOF: the daemon is gone
		close(gone)
	}()
	replaced := func() bool {
		var now syscall.Stat_t
		return syscall.Stat(path, &now) != nil || now.Ino != ino
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for waiting := true; waiting; {
		select {
		case <-ctx.Done():
			return nil
		case <-gone:
			waiting = false
		case <-t.C:
			if replaced() {
				return nil
			}
		}
	}
	srv := &http.Server{Handler: GuardHandler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if replaced() {
				return nil
			}
		}
	}
}

// GuardHandler answers Docker's plugin calls while the daemon is down:
// activation and capabilities as the plugin does (so that a dockerd that
// starts now still knows the driver), every other call ErrDaemonDown.
func GuardHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
		var body any
		switch strings.TrimPrefix(filepath.Clean(r.URL.Path), "/") {
		case "Plugin.Activate":
			body = activateResponse{Implements: []string{ifaceNetwork, ifaceIPAM}}
		case "NetworkDriver.GetCapabilities":
			body = capabilitiesResponse{Scope: "local", ConnectivityScope: "local"}
		case "IpamDriver.GetCapabilities":
			body = ipamCapabilitiesResponse{}
		default:
			w.WriteHeader(http.StatusInternalServerError)
			body = map[string]string{"Err": ErrDaemonDown}
		}
		json.NewEncoder(w).Encode(body)
	})
}
