package testbed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Podman is a Podman of the test's own for one host: Debian's podman with
// the CNI network backend, its storage, run state, containers.conf and CNI
// directories under the bed's directory, so it touches nothing of the
// machine's Podman. Containers on its network "NET" (the host's CNI
// network, made by `weavewg cni install`) are attached to the host's
// weavewg daemon.
type Podman struct {
	CNI  *CNI
	Root string // storage, run state, containers.conf
	conf string
}

// NewPodman sets up Podman for c's host. cniVersion 1.0.0: Podman 4's
// CNI library predates spec 1.1.
func NewPodman(c *CNI) (*Podman, error) {
	p := &Podman{CNI: c, Root: filepath.Join(c.Host.Dir, "podman")}
	for _, d := range []string{"storage", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(p.Root, d), 0o700); err != nil {
			return nil, err
		}
	}
	p.conf = filepath.Join(p.Root, "containers.conf")
	conf := fmt.Sprintf(`# The test's own: CNI backend, the host's weavewg CNI network only.
[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q
default_network = %q

[containers]
# Podman sets RLIMIT_NOFILE and RLIMIT_NPROC in every container; on
# sandboxed machines (this one) runc may only lower limits, never set them
# to the current or a higher value, and fails the container otherwise.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
`, c.BinDir, c.ConfDir, c.Net, filepath.Join(p.Root, "events.log"), filepath.Join(p.Root, "tmp"))
	if err := os.WriteFile(p.conf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	storage := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(p.Root, "storage"), filepath.Join(p.Root, "run"))
	if err := os.WriteFile(filepath.Join(p.Root, "storage.conf"), []byte(storage), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// Run runs podman with args and returns its stdout; the error carries
// stderr. Unlike cnitool it runs in the machine's mount namespace: the
// namespaces Podman makes under /run/netns must be visible to the daemon.
// libcni's cache entries it writes in /var/lib/cni are named after the
// bed's network and removed with the containers (and by Cleanup).
func (p *Podman) Run(args ...string) (string, error) {
	full := append([]string{"--root", filepath.Join(p.Root, "storage"), "--runroot", filepath.Join(p.Root, "run"),
		"--storage-driver", "vfs"}, args...)
	x := exec.Command("podman", full...)
	x.Env = append(os.Environ(), "CONTAINERS_CONF="+p.conf, "CONTAINERS_STORAGE_CONF="+filepath.Join(p.Root, "storage.conf"), "CONTAINERS_REGISTRIES_CONF=/dev/null")
	var o, e bytes.Buffer
	x.Stdout, x.Stderr = &o, &e
	err := x.Run()
	if err != nil {
		return o.String(), fmt.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(e.String()))
	}
	return strings.TrimSpace(o.String()), nil
}

// Cleanup removes every container of this Podman and the CNI cache entries
// of its network, so a failed test leaves nothing on the machine.
func (p *Podman) Cleanup() {
	p.Run("rm", "-f", "-a", "-t", "0")
	matches, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", p.CNI.Net+"-*"))
	for _, m := range matches {
		os.Remove(m)
	}
}
