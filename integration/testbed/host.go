package testbed

import (
	"bytes"
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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weavewg/weavewg/docker"
	"github.com/weavewg/weavewg/types/api"
)

// HostOptions change how AddHost makes and launches a host.
type HostOptions struct {
	// Password overrides the bed's network secret for this host.
	Password string
	// HostIP is passed as --host-ip; "" lets IPAM allocate it (as users
	// do), which keeps it clear of other allocations.
	HostIP string
	// Peers are the PEER arguments of launch. nil means the underlay
	// addresses of every host made before this one; use NoPeers for none.
	Peers   []string
	NoPeers bool
	// Args are extra launch flags.
	Args []string
	// NoLaunch makes the host without starting its daemon.
	NoLaunch bool
	// Firewall is the host's firewall (firewall.go), set up before the
	// daemon first starts.
	Firewall Firewall
	// NoPassword launches without --password: the first host then creates
	// a network with a random secret and prints a join line.
	NoPassword bool
	// Token makes the first start `weavewg join TOKEN` (no peers); later
	// starts are plain launches, as a user restarts a joined host.
	Token string
	// Binary runs this host on another weavewg binary than the bed's (a
	// test-only build, BuildBinaryTags).
	Binary string
}

// Host is a namespace on the underlay running a weavewg daemon.
type Host struct {
	bed         *Bed
	Index       int    // N: underlay 192.0.2.N, host IP 10.32.0.N
	Name        string // nickname given with --name: hN
	Netns       string
	UnderlayIP  string // 192.0.2.N
	HostIP      string // the host's overlay address (CIDR), from status once launched (a joiner's: after WaitMesh)
	Dir         string
	StateDir    string
	Socket      string
	LogPath     string
	Password    string
	Token       string // join token for the next start only
	Peers       []string
	Args        []string
	fixedHostIP bool   // HostIP came from HostOptions and is passed as --host-ip
	binary      string // HostOptions.Binary: "" is the bed's

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current daemon process exits
	exitErr  error
	launches int
	stopping bool
}

// AddHost makes host N (N = number of hosts so far + 1) and, unless
// opts.NoLaunch, launches its daemon and waits for its API.
func (b *Bed) AddHost(opts HostOptions) *Host {
	b.tb.Helper()
	b.mu.Lock()
	n := len(b.hosts) + 1
	var earlier []string
	for _, h := range b.hosts {
		earlier = append(earlier, h.UnderlayIP)
	}
	b.mu.Unlock()

	h := &Host{
		bed:        b,
		Index:      n,
		Name:       fmt.Sprintf("h%d", n),
		Netns:      fmt.Sprintf("%sh%d", b.Prefix, n),
		UnderlayIP: fmt.Sprintf("%s%d", UnderlayNet, n),
		Dir:        b.Path(fmt.Sprintf("h%d", n)),
		Password:   b.opts.Password,
		Peers:      earlier,
		Args:       opts.Args,
		binary:     opts.Binary,
	}
	if opts.Password != "" {
		h.Password = opts.Password
	}
	if opts.NoPassword || opts.Token != "" {
		h.Password = ""
	}
	h.Token = opts.Token
	h.HostIP = opts.HostIP
	h.fixedHostIP = opts.HostIP != ""
	if opts.Peers != nil {
		h.Peers = opts.Peers
	}
	if opts.NoPeers {
		h.Peers = nil
	}
	h.StateDir = filepath.Join(h.Dir, "state")
	h.Socket = filepath.Join(h.Dir, "api.sock")
	h.LogPath = filepath.Join(h.Dir, "daemon.log")
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	b.addUnderlayNode(h.Netns, n)
	if err := h.setFirewall(opts.Firewall, false); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	b.mu.Lock()
	b.hosts = append(b.hosts, h)
	b.mu.Unlock()
	// Stop the daemon before the namespaces go (cleanups run last-in first-out).
	b.tb.Cleanup(h.cleanup)
	if !opts.NoLaunch {
		h.Launch()
	}
	return h
}

// AddHosts makes n hosts, each told about the ones before it, and launches them.
func (b *Bed) AddHosts(n int) []*Host {
	b.tb.Helper()
	var hs []*Host
	for i := 0; i < n; i++ {
		hs = append(hs, b.AddHost(HostOptions{}))
	}
	return hs
}

func (h *Host) String() string { return h.Name }

// LaunchArgs is the command line of the daemon after the binary.
func (h *Host) LaunchArgs() []string {
	verb := "launch"
	if h.Token != "" {
		verb = "join"
	}
	args := []string{verb,
		"--name", h.Name,
		"--port", "6783",
		"--state-dir", h.StateDir,
		"--api-socket", h.Socket,
		"--log-level", h.bed.opts.LogLevel,
	}
	// Per-host Docker paths, so no host touches the machine's Docker, and
	// each host its own /var/run/wireguard (see WG); left out for a binary
	// older than the flag (make bench against an earlier build).
	for _, f := range [][2]string{
		{"--docker-plugin-socket", h.PluginSocket()},
		{"--docker-socket", h.DockerSocket()},
		{"--wg-uapi-dir", h.WGUAPIDir()},
	} {
		if h.bed.binaryHasFlag(h.bin(), verb, f[0]) {
			args = append(args, f[0], f[1])
		}
	}
	if h.fixedHostIP {
		args = append(args, "--host-ip", h.HostIP)
	}
	args = append(args, h.Args...)
	if h.Token != "" {
		return append(args, h.Token)
	}
	return append(args, h.Peers...)
}

// Launch starts the daemon (it must not be running) and waits for its API.
func (h *Host) Launch() {
	h.bed.tb.Helper()
	if err := h.start(); err != nil {
		h.bed.tb.Fatalf("testbed: %s: %v", h, err)
	}
	h.WaitAPI(30 * time.Second)
}

// Start starts the daemon (it must not be running) without waiting for its
// API; for starting many at once from one goroutine (Launch's Fatalf must
// not run on another goroutine than the test's).
func (h *Host) Start() error { return h.start() }

func (h *Host) start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd != nil && !closed(h.done) {
		return errors.New("daemon already running")
	}
	if h.bin() == "" {
		return errors.New("no weavewg binary: set WEAVEWG_BIN or call testbed.BuildBinary first")
	}
	h.launches++
	logf, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== testbed: launch #%d of %s at %s ===\n", h.launches, h.Name, time.Now().Format(time.RFC3339Nano))
	args := append([]string{"netns", "exec", h.Netns, h.bin()}, h.LaunchArgs()...)
	h.Token = "" // joined once: restarts are launches
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), "WEAVEWG_PASSWORD="+h.Password, api.EnvSocket+"="+h.Socket)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group: a Ctrl-C at the demo's terminal reaches the demo,
	// which stops the daemons in order, not everything at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	h.bed.logf("testbed: %s: launched pid %d: weavewg %s", h, cmd.Process.Pid, strings.Join(h.LaunchArgs(), " "))
	done := make(chan struct{})
	h.cmd, h.done, h.exitErr, h.stopping = cmd, done, nil, false
	go func() {
		err := cmd.Wait()
		logf.Close()
		h.mu.Lock()
		h.exitErr = err
		stopping := h.stopping
		h.mu.Unlock()
		close(done)
		if !stopping {
			h.bed.tb.Logf("testbed: %s: daemon pid %d exited by itself: %v", h, cmd.Process.Pid, err)
		}
	}()
	return nil
}

func closed(c chan struct{}) bool {
	if c == nil {
		return true
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Running reports whether the daemon process is alive.
func (h *Host) Running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cmd != nil && !closed(h.done)
}

// Pid is the daemon's process id, 0 if not running.
func (h *Host) Pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil || closed(h.done) {
		return 0
	}
	return h.cmd.Process.Pid
}

// ExitErr is how the last daemon process ended (nil: exit 0 or still running).
func (h *Host) ExitErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.exitErr
}

// WaitAPI polls the API socket until the daemon answers, failing early if
// the daemon exits.
func (h *Host) WaitAPI(timeout time.Duration) {
	h.bed.tb.Helper()
	err := Poll(h.bed.tb, timeout, fmt.Sprintf("%s: API at %s", h, h.Socket), func() error {
		h.mu.Lock()
		done := h.done
		h.mu.Unlock()
		if closed(done) {
			return Permanent{fmt.Errorf("daemon exited: %v", h.ExitErr())}
		}
		st, err := h.StatusErr()
		if err == nil {
			h.HostIP = st.HostIP
		}
		return err
	})
	if err != nil {
		logTail := tail(h.LogPath, 30)
		h.bed.tb.Fatalf("testbed: %v\n---- %s ----\n%s%s", err, h.LogPath, logTail, h.stacks())
	}
}

// stacks makes a daemon that is still running but never answered dump its
// goroutines (SIGQUIT: the Go runtime prints them and exits) and returns
// the start of the dump: where its start was stuck (once 51 s between
// "created a new identity" and "tunnel MTU", with nothing logged).
func (h *Host) stacks() string {
	h.mu.Lock()
	cmd, done := h.cmd, h.done
	h.mu.Unlock()
	if cmd == nil || cmd.Process == nil || closed(done) {
		return ""
	}
	before, _ := os.ReadFile(h.LogPath)
	cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	after, _ := os.ReadFile(h.LogPath)
	if len(after) <= len(before) {
		return ""
	}
	dump := strings.Split(string(after[len(before):]), "\n")
	if len(dump) > 400 {
		dump = dump[:400]
	}
	return "\n---- goroutines of the daemon (SIGQUIT) ----\n" + strings.Join(dump, "\n")
}

// signal sends sig and waits up to timeout for the daemon to exit.
func (h *Host) signal(sig syscall.Signal, timeout time.Duration) (exited bool, err error) {
	h.mu.Lock()
	cmd, done := h.cmd, h.done
	if cmd == nil || closed(done) {
		h.mu.Unlock()
		return true, h.exitErr
	}
	h.stopping = true
	h.mu.Unlock()
	cmd.Process.Signal(sig)
	select {
	case <-done:
		return true, h.ExitErr()
	case <-time.After(timeout):
		return false, nil
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (h *Host) Kill() {
	h.bed.tb.Helper()
	if exited, _ := h.signal(syscall.SIGKILL, 10*time.Second); !exited {
		h.bed.tb.Fatalf("testbed: %s: daemon survived SIGKILL for 10s", h)
	}
	h.bed.logf("testbed: %s: killed (-9)", h)
}

// Stop sends SIGTERM and waits up to 15 s; it returns the exit error (nil
// for a clean exit 0) and fails if the daemon does not exit.
func (h *Host) Stop() error {
	h.bed.tb.Helper()
	exited, err := h.signal(syscall.SIGTERM, 15*time.Second)
	if !exited {
		h.signal(syscall.SIGKILL, 5*time.Second)
		h.bed.tb.Fatalf("testbed: %s: daemon did not exit within 15s of SIGTERM\n%s", h, tail(h.LogPath, 20))
	}
	h.bed.logf("testbed: %s: stopped (%v)", h, err)
	return err
}

// Restart kills the daemon with SIGKILL and launches it again with the same
// state dir and arguments.
func (h *Host) Restart() {
	h.bed.tb.Helper()
	h.Kill()
	h.Launch()
}

func (h *Host) cleanup() {
	// The daemon's Docker plugin guard outlives it by design: stop it too.
	defer docker.StopGuard(h.PluginSocket())
	exited, err := h.signal(syscall.SIGTERM, 10*time.Second)
	if !exited {
		h.bed.tb.Logf("testbed: %s: daemon did not exit within 10s of SIGTERM; killing", h)
		h.signal(syscall.SIGKILL, 5*time.Second)
		return
	}
	if err != nil && h.launches > 0 {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == -1 {
			return // killed by a test
		}
		h.bed.tb.Logf("testbed: %s: daemon exit on SIGTERM: %v", h, err)
	}
}

// bin is the weavewg binary this host runs.
func (h *Host) bin() string {
	if h.binary != "" {
		return h.binary
	}
	return h.bed.bin
}

// Post sends req as JSON to path on the daemon's API socket and fails on
// an error answer.
func (h *Host) Post(path string, req any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	resp, err := h.httpClient().Post("http://weavewg"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(out)))
	}
	return nil
}

func (h *Host) httpClient() *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", h.Socket)
			},
		},
	}
}

// StatusErr reads GET /v1/status from the daemon's API socket.
func (h *Host) StatusErr() (*api.Status, error) {
	resp, err := h.httpClient().Get("http://weavewg" + api.PathStatus)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var st api.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("status: %v in %q", err, body)
	}
	return &st, nil
}

// Status is StatusErr failing the test on error.
func (h *Host) Status() *api.Status {
	h.bed.tb.Helper()
	st, err := h.StatusErr()
	if err != nil {
		h.bed.tb.Fatalf("testbed: %s: %v", h, err)
	}
	return st
}

// CLIErr runs `weavewg ARGS...` in the host's namespace with
// WEAVEWG_API_SOCKET pointing at its daemon.
func (h *Host) CLIErr(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.Netns, h.bin()}, args...)...)
	cmd.Env = append(os.Environ(), api.EnvSocket+"="+h.Socket)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: weavewg %s: %v: %s", h, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// CLI is CLIErr failing the test on error.
func (h *Host) CLI(args ...string) string {
	h.bed.tb.Helper()
	out, err := h.CLIErr(args...)
	if err != nil {
		h.bed.tb.Fatalf("testbed: %v", err)
	}
	return out
}

// Exec runs a command in the host's namespace and returns its combined output.
func (h *Host) Exec(name string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", h.Netns, name}, args...)...)
}

// Log returns the daemon's log so far (all launches).
func (h *Host) Log() string {
	data, _ := os.ReadFile(h.LogPath)
	return string(data)
}

// Self returns the daemon's own peer entry.
func Self(st *api.Status) *api.Peer {
	for i := range st.Peers {
		if st.Peers[i].Self {
			return &st.Peers[i]
		}
	}
	return nil
}

// PeerByNick finds a peer in st by nickname.
func PeerByNick(st *api.Status, nick string) *api.Peer {
	for i := range st.Peers {
		if st.Peers[i].Nickname == nick {
			return &st.Peers[i]
		}
	}
	return nil
}

// ConnsTo returns st's connections whose peer nickname is nick.
func ConnsTo(st *api.Status, nick string) []api.Connection {
	var cs []api.Connection
	for _, c := range st.Conns {
		if c.Nickname == nick {
			cs = append(cs, c)
		}
	}
	return cs
}

// Established reports whether st has an established connection to nick.
func Established(st *api.Status, nick string) bool {
	for _, c := range ConnsTo(st, nick) {
		if c.State == api.StateEstablished {
			return true
		}
	}
	return false
}

// CheckMesh returns nil when every host in hs sees every other as a
// reachable peer with an established connection.
func CheckMesh(hs []*Host) error {
	for _, h := range hs {
		st, err := h.StatusErr()
		if err != nil {
			return fmt.Errorf("%s: %v", h, err)
		}
		for _, o := range hs {
			if o == h {
				continue
			}
			p := PeerByNick(st, o.Name)
			if p == nil {
				return fmt.Errorf("%s does not know %s yet", h, o)
			}
			if !p.Reachable {
				return fmt.Errorf("%s sees %s unreachable", h, o)
			}
			if !Established(st, o.Name) {
				return fmt.Errorf("%s has no established connection to %s", h, o)
			}
		}
	}
	return nil
}

// WaitMesh waits until CheckMesh(hs) holds.
func (b *Bed) WaitMesh(timeout time.Duration, hs ...*Host) {
	b.tb.Helper()
	if len(hs) == 0 {
		hs = b.Hosts()
	}
	Eventually(b.tb, timeout, "mesh of "+fmt.Sprint(hs), func() error { return CheckMesh(hs) })
	// A joiner's host address comes from IPAM once it has space.
	Eventually(b.tb, timeout, "host addresses of "+fmt.Sprint(hs), func() error {
		for _, h := range hs {
			st, err := h.StatusErr()
			if err != nil {
				return err
			}
			if st.HostIP == "" {
				return fmt.Errorf("%s has no host address yet", h)
			}
			h.HostIP = st.HostIP
		}
		return nil
	})
}
