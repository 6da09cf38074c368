package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Host firewalls, as their packages ship them. A host gets one with
// HostOptions.Firewall before its daemon first starts, the way a machine
// has its firewall before weavewg is installed.
//
// No rule may be added to a host to help weavewg (here or in a test): what
// weavewg needs to pass a firewall, it sets up itself.

// Firewall names a host firewall set up.
type Firewall string

const (
	// FirewallNone: no rules, the kernel's default (forward accept).
	FirewallNone Firewall = ""
	// FirewallIPTables is a bare `iptables -P FORWARD DROP` with the
	// system's iptables (iptables-nft on Debian 12): the forward policy
	// ufw sets, without ufw's chains (FirewallUFW is ufw itself).
	FirewallIPTables Firewall = "iptables"
	// FirewallIPTablesLegacy is the same with iptables-legacy.
	FirewallIPTablesLegacy Firewall = "iptables-legacy"
	// FirewallNftables is a plain nftables ruleset whose forward chain's
	// policy is drop (an /etc/nftables.conf that denies forwarding).
	FirewallNftables Firewall = "nftables"
	// FirewallUFW is Debian's ufw package as it ships, enabled: `ufw
	// --force enable` with the package's own /etc/ufw and /etc/default/ufw
	// (DEFAULT_INPUT_POLICY="DROP", DEFAULT_FORWARD_POLICY="DROP", its
	// before/after rules, its sysctl.conf), run in the host's namespace
	// with copies of those files bind-mounted in a mount namespace of its
	// own, so that enabling it changes no file of the machine. ufw's
	// default input policy also drops what peers send to the host:
	// a ufw host is alone in its mesh unless its user opens weavewg's
	// port, which the bed does not do.
	FirewallUFW Firewall = "ufw"
)

// UFWCheck says why a host cannot have ufw here, or nil.
func UFWCheck() error {
	if _, err := exec.LookPath("ufw"); err != nil {
		return fmt.Errorf("ufw is not installed (make test installs ufw)")
	}
	for _, f := range []string{"/etc/ufw/ufw.conf", "/etc/default/ufw"} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("ufw's configuration is missing: %v", err)
		}
	}
	return nil
}

// ufw enables (or reloads) ufw in the host's namespace with the host's
// copies of the package's configuration.
func (h *Host) ufw(reload bool) error {
	etc, def := filepath.Join(h.Dir, "ufw", "etc-ufw"), filepath.Join(h.Dir, "ufw", "default-ufw")
	if _, err := os.Stat(etc); err != nil {
		if err := os.MkdirAll(filepath.Dir(etc), 0o755); err != nil {
			return err
		}
		if out, err := run("cp", "-a", "/etc/ufw", etc); err != nil {
			return fmt.Errorf("%s: copying /etc/ufw: %v: %s", h, err, out)
		}
		if out, err := run("cp", "-a", "/etc/default/ufw", def); err != nil {
			return fmt.Errorf("%s: copying /etc/default/ufw: %v: %s", h, err, out)
		}
	}
	cmd := "ufw --force enable"
	if reload {
		cmd = "ufw reload"
	}
	script := fmt.Sprintf("mount --bind %q /etc/ufw && mount --bind %q /etc/default/ufw && %s", etc, def, cmd)
	if out, err := h.Exec("unshare", "-m", "--propagation", "private", "sh", "-c", script); err != nil {
		return fmt.Errorf("%s: %s: %v: %s", h, cmd, err, out)
	}
	return nil
}

const nftablesDenyForward = "add table inet filter; add chain inet filter forward { type filter hook forward priority filter; policy drop; }"

// setFirewall sets the firewall fw up in the host's namespace; a reload
// flushes it first, as a firewall service does when it reloads.
func (h *Host) setFirewall(fw Firewall, reload bool) error {
	var cmds [][]string
	switch fw {
	case FirewallNone:
		return nil
	case FirewallIPTables, FirewallIPTablesLegacy:
		bin := string(fw)
		if reload {
			cmds = append(cmds, []string{bin, "-F", "FORWARD"})
		}
		cmds = append(cmds, []string{bin, "-P", "FORWARD", "DROP"})
	case FirewallUFW:
		return h.ufw(reload)
	case FirewallNftables:
		if reload {
			cmds = append(cmds, []string{"nft", "delete table inet filter"})
		}
		cmds = append(cmds, []string{"nft", nftablesDenyForward})
	default:
		return fmt.Errorf("unknown firewall %q", fw)
	}
	for _, c := range cmds {
		if out, err := h.Exec(c[0], c[1:]...); err != nil {
			return fmt.Errorf("%s: firewall %s: %v: %s", h, strings.Join(c, " "), err, out)
		}
	}
	return nil
}

// ReloadFirewall reloads the host's firewall: `iptables -F FORWARD;
// iptables -P FORWARD DROP` (or its nftables equivalent), which removes
// whatever rules others had in the chain. On a host without one of its own
// (a Docker host), fw says which to reload.
func (h *Host) ReloadFirewall(fw Firewall) {
	h.bed.tb.Helper()
	if err := h.setFirewall(fw, true); err != nil {
		h.bed.tb.Fatalf("testbed: %v", err)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]|counter packets \d+ bytes \d+`)

// Ruleset is everything the host's firewalls hold (iptables-nft-save,
// iptables-legacy-save, nft list ruleset), without counters and dates, to
// compare before and after.
func (h *Host) Ruleset() string {
	h.bed.tb.Helper()
	var b strings.Builder
	for _, c := range [][]string{{"iptables-nft-save"}, {"iptables-legacy-save"}, {"nft", "list", "ruleset"}} {
		out, err := h.Exec(c[0], c[1:]...)
		if err != nil {
			h.bed.tb.Fatalf("testbed: %s: %s: %v: %s", h, c[0], err, out)
		}
		var keep []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			keep = append(keep, counters.ReplaceAllString(l, ""))
		}
		fmt.Fprintf(&b, "== %s\n%s\n", strings.Join(c, " "), strings.Join(keep, "\n"))
	}
	return b.String()
}
