// Package rpfilter keeps the kernel's strict reverse-path filter off
// weavewg's devices without turning on a filter the host did not ask for.
//
// The kernel filters an interface's received packets by the larger of
// net.ipv4.conf.all.rp_filter and the interface's own value: 0 off, 1
// strict (the route back to the source must leave by the interface the
// packet came in on), 2 loose (some route back must exist). Strict mode
// would drop the packets of a peer's containers that arrive on one of
// weavewg's devices while their prefix is routed into another (the TUN
// and the VXLAN device during a switch, before SetPeers has run).
// Filtering costs a FIB lookup per packet (fib_validate_source): a flood
// ping between containers behind two bridged hosts took about 1 µs more
// per round trip with loose filtering on the bridge and the tunnel device
// than with none (perf, November 30). So an interface is set to loose only
// where strict would otherwise apply; where the host filters loosely or
// not at all, the interface is left as the host has it.
package rpfilter

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// confDir is where the per-interface IPv4 settings are, for the network
// namespace of the calling thread.
const confDir = "/proc/sys/net/ipv4/conf"

// Strict, Loose and Off are rp_filter's values.
const (
	Off    = 0
	Strict = 1
	Loose  = 2
)

// NotStrict makes dev's reverse-path filtering loose if it would otherwise
// be strict, and leaves it alone if not. It reads and writes /proc/sys of
// the calling thread's network namespace. A host that sets "all" to strict
// later (sysctl --system) makes the device strict again: systemd's
// defaults set "all" and every device loose (50-default.conf), which
// keeps it loose.
func NotStrict(dev string) error {
	all, err := read("all")
	if err != nil {
		return err
	}
	own, err := read(dev)
	if err != nil {
		return err
	}
	if max(all, own) != Strict {
		return nil
	}
	p := filepath.Join(confDir, dev, "rp_filter")
	if err := os.WriteFile(p, []byte(strconv.Itoa(Loose)), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%d: %w", p, Loose, err)
	}
	return nil
}

// Effective is dev's reverse-path filtering as the kernel applies it: the
// larger of "all" and the device's own value.
func Effective(dev string) (int, error) {
	all, err := read("all")
	if err != nil {
		return 0, err
	}
	own, err := read(dev)
	if err != nil {
		return 0, err
	}
	return max(all, own), nil
}

func read(dev string) (int, error) {
	p := filepath.Join(confDir, dev, "rp_filter")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("sysctl %s: %w", p, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("sysctl %s: %q: %w", p, b, err)
	}
	return v, nil
}
