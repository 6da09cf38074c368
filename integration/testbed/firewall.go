package testbed

import (
	"fmt"
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
	// FirewallIPTables is ufw's default forward policy, `iptables -P
	// FORWARD DROP`, with the system's iptables (iptables-nft on Debian 12).
	FirewallIPTables Firewall = "iptables"
	// FirewallIPTablesLegacy is the same with iptables-legacy.
	FirewallIPTablesLegacy Firewall = "iptables-legacy"
	// FirewallNftables is a plain nftables ruleset whose forward chain's
	// policy is drop (an /etc/nftables.conf that denies forwarding).
	FirewallNftables Firewall = "nftables"
)

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
