package testbed

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weavewg/weavewg/docker"
)

// Docker hosts: a dockerd per namespace host, in the host's network
// namespace (where the daemon makes the veths Docker moves into containers)
// and in a mount namespace of its own, so that /run/docker/plugins is the
// host's directory PluginDir (the daemon serves its plugin socket there)
// and /run/containerd is empty (dockerd then runs its own containerd rather
// than sharing the machine's). `ip netns exec` is not used: it remounts
// /sys, which hides the cgroup mounts dockerd needs.
//
// dockerd runs as the Debian package starts it: default flags, so iptables
// on (its chains, DOCKER-USER, the FORWARD policy DROP it sets when it turns
// ip_forward on), the docker0 bridge, the userland proxy. The only flags
// given are isolation, so that several dockerds share one machine: the data
// root, exec root, pid file and API socket under the host's directory (the
// config file is an empty one there, so the machine's /etc/docker is not
// read). Nothing here tunes dockerd for weavewg, and no rule may be added
// to a host to help weavewg: what it needs, it sets up itself.

// DockerCheck says why a dockerd cannot be started for a host here, or nil.
func DockerCheck() error {
	if err := Check(); err != nil {
		return err
	}
	for _, c := range []string{"dockerd", "docker", "containerd", "runc", "nsenter", "unshare"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s is not installed (make test installs docker.io)", c)
		}
	}
	return nil
}

// PluginDir is the host's /run/docker/plugins as its dockerd sees it.
func (h *Host) PluginDir() string { return filepath.Join(h.Dir, "plugins") }

// PluginSocket is where the host's daemon serves the Docker plugin.
func (h *Host) PluginSocket() string { return filepath.Join(h.PluginDir(), "weavewg.sock") }

// DockerSocket is the API socket of the host's dockerd.
func (h *Host) DockerSocket() string { return filepath.Join(h.Dir, "docker.sock") }

// Docker is a dockerd serving one host.
type Docker struct {
	h       *Host
	Root    string // data root, exec root, config, log
	LogPath string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	launches int
}

// StartDocker starts a dockerd for the host and waits until it answers. It
// is stopped at cleanup (before the host's daemon, which serves its plugin).
func (h *Host) StartDocker() *Docker {
	h.bed.tb.Helper()
	dk, err := h.StartDockerErr()
	if err != nil {
		h.bed.tb.Fatalf("testbed: %v", err)
	}
	return dk
}

// StartDockerErr is StartDocker returning why dockerd did not come up (its
// last error line and log tail) instead of failing: a test may skip when
// this machine cannot run dockerd at all.
func (h *Host) StartDockerErr() (*Docker, error) {
	h.bed.tb.Helper()
	dk := &Docker{h: h, Root: filepath.Join(h.Dir, "docker")}
	dk.LogPath = filepath.Join(dk.Root, "dockerd.log")
	if err := os.MkdirAll(h.PluginDir(), 0o755); err != nil {
		h.bed.tb.Fatalf("testbed: %v", err)
	}
	if err := os.MkdirAll(dk.Root, 0o700); err != nil {
		h.bed.tb.Fatalf("testbed: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dk.Root, "daemon.json"), []byte("{}\n"), 0o600); err != nil {
		h.bed.tb.Fatalf("testbed: %v", err)
	}
	h.bed.tb.Cleanup(func() {
		// A failure after dockerd came up (a restart slow under load, a
		// container that did not come back) is read in dockerd's log too.
		if f, ok := h.bed.tb.(failer); ok && f.Failed() {
			h.bed.tb.Logf("testbed: ---- last lines of %s's dockerd (%s) ----\n%s", h.Name, dk.LogPath, tail(dk.LogPath, 60))
		}
		dk.stop(20 * time.Second)
	})
	return dk, dk.start()
}

// Start starts dockerd (it must not be running) and waits for its API.
func (dk *Docker) Start() {
	dk.h.bed.tb.Helper()
	if err := dk.start(); err != nil {
		dk.h.bed.tb.Fatalf("testbed: %v", err)
	}
}

func (dk *Docker) start() error {
	tb := dk.h.bed.tb
	dk.mu.Lock()
	dk.launches++
	logf, err := os.OpenFile(dk.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		dk.mu.Unlock()
		return err
	}
	fmt.Fprintf(logf, "=== testbed: dockerd start #%d at %s ===\n", dk.launches, time.Now().Format(time.RFC3339Nano))
	script := fmt.Sprintf(`set -e
mkdir -p /run/docker/plugins /run/containerd
mount -t tmpfs tmpfs /run/containerd
mount --bind %q /run/docker/plugins
exec dockerd --config-file %q --data-root %q --exec-root %q --pidfile %q -H unix://%s`,
		dk.h.PluginDir(), filepath.Join(dk.Root, "daemon.json"), filepath.Join(dk.Root, "data"),
		filepath.Join(dk.Root, "exec"), filepath.Join(dk.Root, "dockerd.pid"), dk.h.DockerSocket())
	cmd := exec.Command("nsenter", "--net="+NetnsPath(dk.h.Netns), "unshare", "-m", "--propagation", "private", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		dk.mu.Unlock()
		return fmt.Errorf("%s: dockerd: %v", dk.h, err)
	}
	done := make(chan struct{})
	dk.cmd, dk.done = cmd, done
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	dk.mu.Unlock()
	dk.h.bed.logf("testbed: %s: dockerd pid %d, socket %s", dk.h, cmd.Process.Pid, dk.h.DockerSocket())

	c := docker.NewClient(dk.h.DockerSocket())
	err = Poll(tb, 60*time.Second, fmt.Sprintf("%s: dockerd API", dk.h), func() error {
		if closed(done) {
			return Permanent{errors.New("dockerd exited")}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.Ping(ctx)
	})
	if err != nil {
		return fmt.Errorf("%v: %s\n---- %s ----\n%s", err, lastDockerdError(dk.LogPath), dk.LogPath, tail(dk.LogPath, 30))
	}
	return nil
}

// lastDockerdError is the line of dockerd's log that says why it stopped.
func lastDockerdError(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if strings.HasPrefix(l, "failed to start daemon") || strings.Contains(l, "level=fatal") {
			return l
		}
	}
	return "(no error line in its log)"
}

// Stop stops dockerd with SIGTERM (it stops the containers, which leave
// their networks) and waits for it.
func (dk *Docker) Stop() {
	dk.h.bed.tb.Helper()
	if !dk.stop(30 * time.Second) {
		dk.h.bed.tb.Fatalf("testbed: %s: dockerd did not stop within 30s of SIGTERM\n%s", dk.h, tail(dk.LogPath, 20))
	}
}

func (dk *Docker) stop(timeout time.Duration) bool {
	dk.mu.Lock()
	cmd, done := dk.cmd, dk.done
	dk.mu.Unlock()
	if cmd == nil || closed(done) {
		return true
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return false
	}
}

// Run runs the docker client against this dockerd.
func (dk *Docker) Run(args ...string) (string, error) {
	out, err := run("docker", append([]string{"-H", "unix://" + dk.h.DockerSocket()}, args...)...)
	return strings.TrimSpace(out), err
}

// MustRun is Run failing the test on error.
func (dk *Docker) MustRun(args ...string) string {
	dk.h.bed.tb.Helper()
	out, err := dk.Run(args...)
	if err != nil {
		dk.h.bed.tb.Fatalf("testbed: %s: %v", dk.h, err)
	}
	return out
}

// Log returns dockerd's log so far.
func (dk *Docker) Log() string {
	b, _ := os.ReadFile(dk.LogPath)
	return string(b)
}

// BusyboxTar writes (once per bed) a tarball of a root filesystem holding
// the machine's static busybox, its applets as relative symlinks, and
// /www/index.html saying page; `docker import` makes an image of it.
func (b *Bed) BusyboxTar(page string) (string, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", errors.New("busybox is not installed (make test installs busybox-static)")
	}
	if f, err := elf.Open(bb); err != nil {
		return "", fmt.Errorf("%s: %v", bb, err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				f.Close()
				return "", fmt.Errorf("%s is linked dynamically; the image needs busybox-static", bb)
			}
		}
		f.Close()
	}
	root := b.Path("busybox-root")
	tar := b.Path("busybox.tar")
	if _, err := os.Stat(tar); err == nil {
		return tar, nil
	}
	for _, d := range []string{"bin", "etc", "tmp", "www"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	if _, err := run("cp", bb, filepath.Join(root, "bin", "busybox")); err != nil {
		return "", err
	}
	list, err := run(bb, "--list")
	if err != nil {
		return "", err
	}
	for _, a := range strings.Fields(list) {
		if a == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "www", "index.html"), []byte(page), 0o644); err != nil {
		return "", err
	}
	if _, err := run("tar", "-C", root, "-cf", tar, "."); err != nil {
		return "", err
	}
	return tar, nil
}

// Import makes image tag from a root filesystem tarball.
func (dk *Docker) Import(tarPath, tag string) error {
	cmd := exec.Command("docker", "-H", "unix://"+dk.h.DockerSocket(), "import",
		"-c", `CMD ["/bin/sh"]`, "-c", "ENV PATH=/bin", tarPath, tag)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: docker import: %v: %s", dk.h, err, out)
	}
	return nil
}
