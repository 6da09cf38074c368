package testbed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// CnitoolVersion is the cnitool the CNI tests build from the module proxy:
// the release of github.com/containernetworking/cni that weavewg's plugin
// is built with (go.mod), so runtime and plugin speak the same library.
const CnitoolVersion = "v1.3.0"

var (
	cnitoolOnce sync.Once
	cnitoolPath string
	cnitoolErr  error
)

// Cnitool builds cnitool (once per machine and version, into the temporary
// directory) and returns its path; an error says why it cannot be built
// here (no module proxy, no go command).
func Cnitool() (string, error) {
	cnitoolOnce.Do(func() {
		// Kept across runs (a cache, like Go's own): one build per version.
		dir := filepath.Join(os.TempDir(), "weavewg-cnitool-"+CnitoolVersion)
		if _, err := os.Stat(filepath.Join(dir, "cnitool")); err == nil {
			cnitoolPath = filepath.Join(dir, "cnitool")
			return
		}
		cmd := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@"+CnitoolVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			cnitoolErr = fmt.Errorf("building cnitool %s from the module proxy: %v: %s", CnitoolVersion, err, strings.TrimSpace(string(out)))
			return
		}
		cnitoolPath = filepath.Join(dir, "cnitool")
	})
	return cnitoolPath, cnitoolErr
}

// CNI is one host's CNI setup as a runtime sees it: the plugin directory,
// the network configuration directory and the network's name, made by
// `weavewg cni install` on that host.
type CNI struct {
	Host    *Host
	BinDir  string
	ConfDir string
	Net     string
	// Cache is libcni's cache directory for cnitool, bind-mounted over
	// /var/lib/cni in cnitool's own mount namespace, so the tests never
	// touch the machine's.
	Cache string
	Tool  string
}

// InstallCNI runs `weavewg cni install` for h into the bed's directory with
// the given extra flags, and returns the setup for cnitool.
func (h *Host) InstallCNI(tool string, flags ...string) (*CNI, error) {
	c := &CNI{
		Host:    h,
		BinDir:  filepath.Join(h.Dir, "cni", "bin"),
		ConfDir: filepath.Join(h.Dir, "cni", "net.d"),
		Net:     h.bed.Prefix + h.Name,
		Cache:   filepath.Join(h.Dir, "cni", "cache"),
		Tool:    tool,
	}
	if err := os.MkdirAll(c.Cache, 0o700); err != nil {
		return nil, err
	}
	args := append([]string{"cni", "install", "--bin-dir", c.BinDir, "--conf-dir", c.ConfDir,
		"--network-name", c.Net, "--api-socket", h.Socket}, flags...)
	if _, err := h.CLIErr(args...); err != nil {
		return nil, err
	}
	return c, nil
}

// Run runs `cnitool CMD NET NETNS_PATH` with CNI_ARGS naming the pod (when
// pod is not ""), and returns stdout and stderr.
func (c *CNI) Run(cmd, netns, pod string) (stdout, stderr string, err error) {
	if err := os.MkdirAll("/var/lib/cni", 0o755); err != nil {
		return "", "", err
	}
	// A private mount namespace with the bed's cache over /var/lib/cni.
	x := exec.Command("unshare", "-m", "sh", "-c", `mount --bind "$0" /var/lib/cni && exec "$@"`,
		c.Cache, c.Tool, cmd, c.Net, NetnsPath(netns))
	env := append(os.Environ(), "NETCONFPATH="+c.ConfDir, "CNI_PATH="+c.BinDir)
	if pod != "" {
		env = append(env, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME="+pod)
	}
	x.Env = env
	var o, e bytes.Buffer
	x.Stdout, x.Stderr = &o, &e
	err = x.Run()
	if err != nil {
		err = fmt.Errorf("cnitool %s %s %s: %v: %s%s", cmd, c.Net, netns, err, strings.TrimSpace(o.String()), strings.TrimSpace(e.String()))
	}
	return o.String(), e.String(), err
}

// Plugin runs the installed plugin binary as a runtime would, with env
// (CNI_* variables) and stdin, and returns its stdout and exit error.
func (c *CNI) Plugin(env []string, stdin string) (string, error) {
	x := exec.Command(filepath.Join(c.BinDir, "weavewg"))
	x.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	x.Stdin = strings.NewReader(stdin)
	out, err := x.Output()
	return string(out), err
}
