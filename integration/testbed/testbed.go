// Package testbed builds weavewg meshes out of network namespaces on one
// machine: hosts joined through an underlay bridge in a namespace of its own,
// a weavewg daemon per host, and containers (namespaces) attached to them.
//
// Layout of one Bed, every name starting with the bed's prefix
// ("wwg<ownerPID>-<4 hex>-"):
//
//	PREFIX-ul   underlay namespace, bridge br0; nothing else lives there
//	PREFIX-h1   host 1: eth0 192.0.2.1/24 (veth to br0), daemon, bridge weavewg, TUN
//	PREFIX-h1c1 container 1 of host 1: ethwe0 made by `weavewg attach`
//	PREFIX-x200 an extra underlay node (192.0.2.200) for probes and attacks
//
// Nothing is created in the root namespace except the namespaces themselves
// and a temporary directory for state dirs, sockets and logs. Every resource
// is registered with TB.Cleanup as it is made, so it goes away on success,
// failure and panic. Namespaces of earlier runs whose owning process is dead
// are swept when a Bed is made; live runs' are never touched.
//
// The core takes a TB, not *testing.T, so the demo can drive it too.
package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// TB is the part of testing.TB the bed needs. Fatalf must not return (the
// demo's implementation panics and recovers in main).
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// failer is implemented by *testing.T; when present and failed, cleanup dumps
// the tails of the daemon logs.
type failer interface{ Failed() bool }

// Options configure a Bed. Zero values get defaults.
type Options struct {
	// Binary is the weavewg binary; "" means the one from BuildBinary or env
	// WEAVEWG_BIN. Only launching a daemon needs it.
	Binary string
	// Password is the network secret every host launches with unless a host
	// says otherwise. "" means a random one per bed.
	Password string
	// LogLevel of the daemons; "" means debug.
	LogLevel string
	// Quiet drops the per-command log lines.
	Quiet bool
}

// Bed is one test network.
type Bed struct {
	tb       TB
	opts     Options
	bin      string
	Prefix   string // e.g. "wwg4242-3fa1-"
	Dir      string // temporary directory: per-host state, sockets, logs
	Underlay string // namespace holding the underlay bridge br0

	mu     sync.Mutex
	hosts  []*Host
	nodes  map[int]string // underlay octet → namespace
	ctrs   []*Container
	nftSet bool

	// arpFullsAtStart is the machine's count of neighbour-table overflows
	// when the bed was made (arpTableFulls).
	arpFullsAtStart uint64

	flags binaryFlags // what the binary's --help lists (binflags.go)
}

// UnderlayNet is the underlay /24; hosts get .N, extra nodes .200 and up.
const UnderlayNet = "192.0.2."

// New makes the underlay namespace and bridge. Hosts come from AddHost.
func New(tb TB, opts Options) *Bed {
	tb.Helper()
	requireEnv(tb)
	bin := opts.Binary
	if bin == "" {
		bin = binaryPath()
	}
	if opts.Password == "" {
		opts.Password = "bed-" + randHex(8)
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	Sweep(tb)
	b := &Bed{
		tb:     tb,
		opts:   opts,
		bin:    bin,
		Prefix: fmt.Sprintf("wwg%d-%s-", os.Getpid(), randHex(2)),
		nodes:  map[int]string{},
	}
	dir, err := os.MkdirTemp("", strings.TrimSuffix(b.Prefix, "-")+"-")
	if err != nil {
		tb.Fatalf("testbed: %v", err)
	}
	b.Dir = dir
	tb.Cleanup(func() {
		keep := os.Getenv("WEAVEWG_KEEP") // "always", or any other value: on failure
		if f, ok := tb.(failer); keep == "always" || keep != "" && ok && f.Failed() {
			tb.Logf("testbed: WEAVEWG_KEEP=%s: leaving %s", keep, dir)
			return
		}
		os.RemoveAll(dir)
	})
	// Registered before anything else so it runs last: a final sweep of every
	// namespace of this bed, whatever the individual cleanups missed.
	tb.Cleanup(b.removeLeftovers)

	b.Underlay = b.Prefix + "ul"
	b.addNetns(b.Underlay)
	b.MustIP(b.Underlay, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	b.MustIP(b.Underlay, "link", "set", "br0", "up")
	tb.Logf("testbed: prefix %s, dir %s", b.Prefix, dir)
	b.arpFullsAtStart = arpTableFulls()
	tb.Cleanup(b.dumpLogsOnFailure)
	return b
}

// TB returns the bed's TB.
func (b *Bed) TB() TB { return b.tb }

// Password is the bed's default network secret.
func (b *Bed) Password() string { return b.opts.Password }

// BinaryPath is the weavewg binary the bed runs.
func (b *Bed) BinaryPath() string { return b.bin }

func (b *Bed) logf(format string, args ...any) {
	if !b.opts.Quiet {
		b.tb.Logf(format, args...)
	}
}

// addNetns creates a namespace, registers its deletion, brings lo up and
// turns IPv6 off so the underlay carries only what the daemons send.
func (b *Bed) addNetns(name string) {
	b.tb.Helper()
	if _, err := run("ip", "netns", "add", name); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	b.tb.Cleanup(func() { deleteNetns(b.tb, name) })
	b.MustIP(name, "link", "set", "lo", "up")
	if _, err := run("ip", "netns", "exec", name, "sysctl", "-q", "-w",
		"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		b.tb.Logf("testbed: disabling IPv6 in %s: %v", name, err)
	}
}

// AddNode puts a bare namespace on the underlay at 192.0.2.octet/24 (no
// daemon) and returns its name; used for probes and malformed traffic.
func (b *Bed) AddNode(octet int) string {
	b.tb.Helper()
	name := fmt.Sprintf("%sx%d", b.Prefix, octet)
	b.addUnderlayNode(name, octet)
	return name
}

func (b *Bed) addUnderlayNode(ns string, octet int) {
	b.tb.Helper()
	b.mu.Lock()
	if _, dup := b.nodes[octet]; dup || octet < 1 || octet > 254 {
		b.mu.Unlock()
		b.tb.Fatalf("testbed: underlay address %s%d taken or invalid", UnderlayNet, octet)
	}
	b.nodes[octet] = ns
	b.mu.Unlock()
	b.addNetns(ns)
	port := fmt.Sprintf("p%d", octet)
	b.MustIP(b.Underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
	b.MustIP(b.Underlay, "link", "set", port, "master", "br0", "up")
	b.MustIP(ns, "addr", "add", fmt.Sprintf("%s%d/24", UnderlayNet, octet), "dev", "eth0")
	b.MustIP(ns, "link", "set", "eth0", "up")
}

// Hosts returns the hosts made so far.
func (b *Bed) Hosts() []*Host {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Host(nil), b.hosts...)
}

// Containers returns the containers made so far.
func (b *Bed) Containers() []*Container {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Container(nil), b.ctrs...)
}

// MustIP runs `ip -n NS ARGS...` and fails the test on error.
func (b *Bed) MustIP(ns string, args ...string) string {
	b.tb.Helper()
	out, err := run("ip", append([]string{"-n", ns}, args...)...)
	if err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	return out
}

// removeLeftovers deletes any namespace with this bed's prefix that is still
// there (processes inside are killed first).
func (b *Bed) removeLeftovers() {
	names, _ := listNetns()
	for _, n := range names {
		if strings.HasPrefix(n, b.Prefix) {
			deleteNetns(b.tb, n)
		}
	}
}

func (b *Bed) dumpLogsOnFailure() {
	f, ok := b.tb.(failer)
	if !ok || !f.Failed() {
		return
	}
	if n := arpTableFulls() - b.arpFullsAtStart; n > 0 {
		b.tb.Logf("testbed: the machine's ARP table overflowed %d times during this test "+
			"(gc_thresh3, shared by every namespace: another bed filled it); addresses that needed "+
			"resolving then went unanswered (dial i/o timeouts, lost pings)", n)
	}
	for _, h := range b.Hosts() {
		if h.launches == 0 {
			continue
		}
		b.tb.Logf("testbed: ---- last lines of %s (%s) ----\n%s", h.Name, h.LogPath, tail(h.LogPath, 40))
	}
}

func randHex(n int) string {
	p := make([]byte, n)
	rand.Read(p)
	return hex.EncodeToString(p)
}

func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// Eventually calls f until it returns nil or timeout passes, logging the last
// error every few seconds so a slow wait is visible; on timeout it fails with
// what and the last error.
func Eventually(tb TB, timeout time.Duration, what string, f func() error) {
	tb.Helper()
	if err := Poll(tb, timeout, what, f); err != nil {
		tb.Fatalf("%v", err)
	}
}

// Poll is Eventually returning the error instead of failing.
func Poll(tb TB, timeout time.Duration, what string, f func() error) error {
	start := time.Now()
	deadline := start.Add(timeout)
	nextReport := start.Add(3 * time.Second)
	delay := 50 * time.Millisecond
	for {
		err := f()
		var perm Permanent
		if errors.As(err, &perm) {
			return fmt.Errorf("%s: %w", what, perm.Err)
		}
		if err == nil {
			if d := time.Since(start); d > time.Second {
				tb.Logf("%s: ok after %.1fs", what, d.Seconds())
			}
			return nil
		}
		now := time.Now()
		if now.After(deadline) {
			return fmt.Errorf("%s: still failing after %s: %w", what, timeout, err)
		}
		if now.After(nextReport) {
			tb.Logf("%s: waiting (%.0fs): %v", what, now.Sub(start).Seconds(), err)
			nextReport = now.Add(3 * time.Second)
		}
		time.Sleep(delay)
		if delay < 500*time.Millisecond {
			delay *= 2
		}
	}
}

// Permanent wraps an error that Poll and Eventually must not retry.
type Permanent struct{ Err error }

func (p Permanent) Error() string { return p.Err.Error() }
func (p Permanent) Unwrap() error { return p.Err }

// Path joins elements under the bed's directory.
func (b *Bed) Path(elem ...string) string { return filepath.Join(append([]string{b.Dir}, elem...)...) }

// arpTableFulls is how many times since boot the kernel could not add a
// neighbour (ARP) entry because the table, one for every namespace on the
// machine, was at gc_thresh3: the last column of /proc/net/stat/arp_cache,
// one row per CPU, in hex. 0 if it cannot be read.
func arpTableFulls() uint64 {
	data, err := os.ReadFile("/proc/net/stat/arp_cache")
	if err != nil {
		return 0
	}
	var n uint64
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 13 {
			continue
		}
		if v, err := strconv.ParseUint(f[12], 16, 64); err == nil {
			n += v
		}
	}
	return n
}
