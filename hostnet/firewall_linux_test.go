package hostnet

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/internal/netnstest"
)

func requireFirewallTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, c := range tools {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s is not installed (make test installs it)", c)
		}
	}
}

// ruleset is everything any firewall backend holds in ns, as text.
func ruleset(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"iptables-nft-save"}, {"iptables-legacy-save"}, {"nft", "list", "ruleset"}} {
		out := run(t, append([]string{"ip", "netns", "exec", ns.Name}, args...)...)
		var keep []string
		for _, l := range strings.Split(out, "\n") {
			// Dates and packet counts change by themselves.
			if strings.HasPrefix(l, "#") || strings.HasPrefix(l, ":") {
				continue
			}
			keep = append(keep, l)
		}
		b.WriteString(strings.Join(args, " ") + ":\n" + strings.Join(keep, "\n") + "\n")
	}
	return b.String()
}

// TestKernelForwardVerdicts shows the kernel behaviour the firewall rules
// rest on: an accept in one base chain on the forward hook does not
// override a drop in another base chain on the same hook (another nftables
// table, or iptables-nft's FORWARD), whatever their priorities; an accept
// placed before the drop in the same chain does.
func TestKernelForwardVerdicts(t *testing.T) {
	netnstest.RequireNetAdmin(t)
	requireFirewallTools(t, "nft", "iptables-nft", "ping")
	r, a, b := newNetns(t, "r"), newNetns(t, "a"), newNetns(t, "b")
	for i, n := range []*netnstest.NS{a, b} {
		peer := []string{"va", "vb"}[i]
		run(t, "ip", "-n", r.Name, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", n.Name)
		run(t, "ip", "-n", r.Name, "addr", "add", []string{"192.0.2.1/25", "192.0.2.129/25"}[i], "dev", peer)
		run(t, "ip", "-n", r.Name, "link", "set", peer, "up")
		run(t, "ip", "-n", n.Name, "addr", "add", []string{"192.0.2.2/25", "192.0.2.130/25"}[i], "dev", "eth0")
		run(t, "ip", "-n", n.Name, "link", "set", "eth0", "up")
		run(t, "ip", "-n", n.Name, "route", "add", "default", "via", []string{"192.0.2.1", "192.0.2.129"}[i])
	}
	run(t, "ip", "netns", "exec", r.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	ping := func() bool {
		return exec.Command("ip", "netns", "exec", a.Name, "ping", "-c", "1", "-W", "1", "192.0.2.130").Run() == nil
	}
	nft := func(script string) {
		t.Helper()
		run(t, "ip", "netns", "exec", r.Name, "nft", script)
	}
	// The veths just made carry nothing until the kernel's link-watch work
	// has applied their carrier, which a loaded machine runs late: the
	// first check waits for forwarding (one echo a second, up to 10 s)
	// instead of giving one echo a second.
	if exec.Command("ip", "netns", "exec", a.Name, "ping", "-c", "1", "-w", "10", "192.0.2.130").Run() != nil {
		t.Fatal("no forwarding at all without rules")
	}
	// A drop policy in one table; an accept in another, at an earlier and
	// at a later priority.
	nft("add table inet deny; add chain inet deny c { type filter hook forward priority 0; policy drop; }")
	if ping() {
		t.Fatal("the drop policy does not drop")
	}
	nft("add table inet early; add chain inet early c { type filter hook forward priority -100; policy accept; }; add rule inet early c accept")
	nft("add table inet late; add chain inet late c { type filter hook forward priority 100; policy accept; }; add rule inet late c accept")
	if ping() {
		t.Fatal("an accept in another table overrode a drop policy: the firewall design is wrong")
	}
	// The same accept in the chain that holds the drop policy passes.
	nft("insert rule inet deny c accept")
	if !ping() {
		t.Fatal("an accept in the chain with the drop policy did not pass")
	}
	nft("delete table inet deny")
	// iptables-nft's FORWARD DROP, with the accepts in other tables.
	run(t, "ip", "netns", "exec", r.Name, "iptables-nft", "-P", "FORWARD", "DROP")
	if ping() {
		t.Fatal("an accept in a separate nftables table overrode iptables-nft's FORWARD DROP")
	}
	run(t, "ip", "netns", "exec", r.Name, "iptables-nft", "-I", "FORWARD", "-j", "ACCEPT")
	if !ping() {
		t.Fatal("an accept in FORWARD did not pass")
	}
}

// backend is a host firewall as it ships, set up in a namespace.
type backend struct {
	name   string
	tools  []string
	setup  [][]string // commands run in the namespace before weavewg starts
	reload [][]string // a reload: the firewall flushes and sets itself up again
	chain  []string   // lists the chain weavewg's rules must head
}

var backends = []backend{
	{
		name:   "iptables-nft FORWARD DROP (ufw's default)",
		tools:  []string{"iptables-nft"},
		setup:  [][]string{{"iptables-nft", "-P", "FORWARD", "DROP"}},
		reload: [][]string{{"iptables-nft", "-F", "FORWARD"}, {"iptables-nft", "-P", "FORWARD", "DROP"}},
		chain:  []string{"iptables-nft", "-S", "FORWARD"},
	},
	{
		// Docker 20.10's layout of FORWARD.
		name:  "iptables-nft with Docker's chains",
		tools: []string{"iptables-nft"},
		setup: [][]string{
			{"iptables-nft", "-N", "DOCKER-USER"}, {"iptables-nft", "-A", "DOCKER-USER", "-j", "RETURN"},
			{"iptables-nft", "-P", "FORWARD", "DROP"},
			{"iptables-nft", "-A", "FORWARD", "-j", "DOCKER-USER"},
			{"iptables-nft", "-A", "FORWARD", "-o", "docker0", "-j", "ACCEPT"},
		},
		// What dockerd does when it starts again: the jump goes back on top.
		reload: [][]string{{"iptables-nft", "-D", "FORWARD", "-j", "DOCKER-USER"}, {"iptables-nft", "-I", "FORWARD", "-j", "DOCKER-USER"},
			{"iptables-nft", "-F", "DOCKER-USER"}, {"iptables-nft", "-A", "DOCKER-USER", "-j", "RETURN"}},
		chain: []string{"iptables-nft", "-S", "DOCKER-USER"},
	},
	{
		name:   "iptables-legacy FORWARD DROP",
		tools:  []string{"iptables-legacy", "iptables-legacy-save"},
		setup:  [][]string{{"iptables-legacy", "-P", "FORWARD", "DROP"}},
		reload: [][]string{{"iptables-legacy", "-F", "FORWARD"}, {"iptables-legacy", "-P", "FORWARD", "DROP"}},
		chain:  []string{"iptables-legacy", "-S", "FORWARD"},
	},
	{
		name:   "nftables forward policy drop",
		tools:  []string{"nft"},
		setup:  [][]string{{"nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority filter; policy drop; }"}},
		reload: [][]string{{"nft", "flush ruleset"}, {"nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority filter; policy drop; }"}},
		chain:  []string{"nft", "list", "chain", "inet", "filter", "forward"},
	},
	{
		// firewalld's way: policy accept, a reject at the end.
		name:   "nftables forward chain ending in reject",
		tools:  []string{"nft"},
		setup:  [][]string{{"nft", "add table inet fw; add chain inet fw filter_FORWARD { type filter hook forward priority filter + 10; policy accept; }; add rule inet fw filter_FORWARD ct state established,related accept; add rule inet fw filter_FORWARD reject with icmpx admin-prohibited"}},
		reload: [][]string{{"nft", "delete table inet fw"}, {"nft", "add table inet fw; add chain inet fw filter_FORWARD { type filter hook forward priority filter + 10; policy accept; }; add rule inet fw filter_FORWARD ct state established,related accept; add rule inet fw filter_FORWARD reject with icmpx admin-prohibited"}},
		chain:  []string{"nft", "list", "chain", "inet", "fw", "filter_FORWARD"},
	},
}

// ourRulesOnTop reports whether the listing starts (after policy and
// chain lines) with weavewg's three rules.
func ourRulesOnTop(listing string) bool {
	var rules []string
	for _, l := range strings.Split(listing, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "-A "):
			rules = append(rules, l)
		case strings.Contains(l, "iifname") || strings.Contains(l, "reject") || strings.Contains(l, "ct state") || strings.Contains(l, " accept") && !strings.Contains(l, "policy"):
			rules = append(rules, l)
		}
	}
	if len(rules) < 3 {
		return false
	}
	for i, want := range [][2]string{{"weavewg", "weavewg"}, {"weavewg", "weavewg0"}, {"weavewg0", "weavewg"}} {
		r := rules[i]
		ok := strings.Contains(r, "weavewg-weavewg") &&
			(strings.Contains(r, "-i "+want[0]+" -o "+want[1]+" ") || strings.Contains(r, `iifname "`+want[0]+`" oifname "`+want[1]+`"`))
		if !ok {
			return false
		}
	}
	return true
}

// stopFirewallWatcher stops h's firewall watcher so that a test can drive
// ensure itself; Close copes with the watcher already stopped.
func stopFirewallWatcher(h *Host) {
	close(h.fwStop)
	<-h.fwDone
	h.fwStop = nil
}

// TestFirewallBackends: on each kind of host firewall weavewg's rules head
// the chain that holds the forward policy, come back after a reload, and
// leave the ruleset exactly as it was when the Host closes.
func TestFirewallBackends(t *testing.T) {
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			requireFirewallTools(t, append(bk.tools, "iptables-nft-save", "iptables-legacy-save", "nft")...)
			h := oneHost(t)
			in := func(args ...string) string {
				t.Helper()
				return run(t, append([]string{"ip", "netns", "exec", h.ns.Name}, args...)...)
			}
			for _, c := range bk.setup {
				in(c...)
			}
			before := ruleset(t, h.ns)
			h.start(t)
			if l := in(bk.chain...); !ourRulesOnTop(l) {
				t.Fatalf("after New, %s:\n%s", strings.Join(bk.chain, " "), l)
			}
			// The watcher would put the rules back between the reload
			// and the check below (it ticks every 2 s on the process's
			// beat); this part drives ensure itself.
			stopFirewallWatcher(h.host)
			for _, c := range bk.reload {
				in(c...)
			}
			if l := in(bk.chain...); ourRulesOnTop(l) {
				t.Fatalf("the reload left the rules in place; it tests nothing:\n%s", l)
			}
			repaired, err := h.host.fw.ensure()
			if err != nil || len(repaired) == 0 {
				t.Fatalf("ensure after the reload: %v, %v", repaired, err)
			}
			if l := in(bk.chain...); !ourRulesOnTop(l) {
				t.Fatalf("after the reload and a check, %s:\n%s", strings.Join(bk.chain, " "), l)
			}
			if repaired, err := h.host.fw.ensure(); err != nil || len(repaired) != 0 {
				t.Errorf("a second check changed %v (%v); want nothing", repaired, err)
			}
			afterReload := ruleset(t, h.ns)
			if err := h.host.Close(); err != nil {
				t.Fatal(err)
			}
			after := ruleset(t, h.ns)
			if after != before {
				t.Errorf("the ruleset differs after Close:\nbefore:\n%s\nafter:\n%s\n(while running:\n%s)", before, after, afterReload)
			}
		})
	}
}

// TestFirewallNoPolicy: a host whose forward chains cannot drop gets no
// rules, and nothing is created (no iptables table, no legacy module use).
func TestFirewallNoPolicy(t *testing.T) {
	requireFirewallTools(t, "iptables-nft-save", "iptables-legacy-save", "nft")
	h := oneHost(t)
	before := ruleset(t, h.ns)
	h.start(t)
	during := ruleset(t, h.ns)
	if strings.Contains(during, "weavewg-weavewg") {
		t.Errorf("rules added on a host without a forward policy:\n%s", during)
	}
	if err := h.host.Close(); err != nil {
		t.Fatal(err)
	}
	if after := ruleset(t, h.ns); after != before {
		t.Errorf("the ruleset differs after Close:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestFirewallPassesBridgedTraffic: with br_netfilter on (Docker turns it
// on) traffic between two containers on the bridge goes through FORWARD;
// under a DROP policy it passes only thanks to weavewg's rules.
func TestFirewallPassesBridgedTraffic(t *testing.T) {
	requireFirewallTools(t, "iptables-nft", "ping")
	h := oneHost(t)
	if out, err := exec.Command("ip", "netns", "exec", h.ns.Name, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").Output(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Skipf("br_netfilter is not loaded (Docker loads it); bridged traffic does not see FORWARD here")
	}
	in := func(args ...string) string {
		t.Helper()
		return run(t, append([]string{"ip", "netns", "exec", h.ns.Name}, args...)...)
	}
	in("iptables-nft", "-P", "FORWARD", "DROP")
	h.start(t)
	c1, c2 := newNetns(t, "c1"), newNetns(t, "c2")
	for i, c := range []*netnstest.NS{c1, c2} {
		if _, err := h.host.Attach(AttachSpec{Netns: c.Path, IP: netipPrefix([]string{"10.32.1.1/12", "10.32.1.2/12"}[i])}); err != nil {
			t.Fatal(err)
		}
	}
	// One reply within a deadline, with a probe a second: the first may wait
	// for ARP, and a loaded machine is slow; reachability is the question.
	ping := func() bool {
		return exec.Command("ip", "netns", "exec", c1.Name, "ping", "-c", "1", "-w", "4", "10.32.1.2").Run() == nil
	}
	if !ping() {
		t.Fatalf("container to container on the bridge under FORWARD DROP:\n%s", in("iptables-nft", "-L", "FORWARD", "-v"))
	}
	// The watcher would put the rules back while the next ping waits; this
	// part of the test drives ensure itself.
	stopFirewallWatcher(h.host)
	in("iptables-nft", "-F", "FORWARD")
	if ping() {
		t.Fatal("bridged traffic passes without weavewg's rules too; the test tests nothing")
	}
	if _, err := h.host.fw.ensure(); err != nil {
		t.Fatal(err)
	}
	if !ping() {
		t.Fatal("bridged traffic does not pass after the rules came back")
	}
}

func TestPlanIPTables(t *testing.T) {
	const n = 3
	ours := []int{0, 1, 2}
	with := func(rules ...[]int) []int {
		var out []int
		for _, r := range rules {
			out = append(out, r...)
		}
		return out
	}
	other, jump := []int{ruleOther}, []int{ruleJumpDockerUser}
	for _, c := range []struct {
		name      string
		fwd, user chainView
		target    string
		inPlace   bool
	}{
		{"no filter table rules, policy accept", chainView{exists: true}, chainView{}, "", true},
		{"policy accept, ours left behind", chainView{exists: true, rules: ours}, chainView{}, "", false},
		{"policy drop, nothing yet", chainView{exists: true, policyDrop: true}, chainView{}, "FORWARD", false},
		{"policy drop, ours on top", chainView{exists: true, policyDrop: true, rules: with(ours, other)}, chainView{}, "FORWARD", true},
		{"policy drop, buried under another rule", chainView{exists: true, policyDrop: true, rules: with(other, ours)}, chainView{}, "FORWARD", false},
		{"policy drop, out of order", chainView{exists: true, policyDrop: true, rules: []int{1, 0, 2}}, chainView{}, "FORWARD", false},
		{"policy drop, a duplicate further down", chainView{exists: true, policyDrop: true, rules: with(ours, other, []int{0})}, chainView{}, "FORWARD", false},
		{"policy drop, an old rule of ours", chainView{exists: true, policyDrop: true, rules: with(ours, []int{n})}, chainView{}, "FORWARD", false},
		{"Docker: into DOCKER-USER", chainView{exists: true, policyDrop: true, rules: with(jump, other)}, chainView{exists: true, rules: other}, "DOCKER-USER", false},
		{"Docker: in DOCKER-USER", chainView{exists: true, policyDrop: true, rules: with(jump, other)}, chainView{exists: true, rules: with(ours, other)}, "DOCKER-USER", true},
		{"Docker: also left in FORWARD", chainView{exists: true, policyDrop: true, rules: with(jump, ours)}, chainView{exists: true, rules: with(ours, other)}, "DOCKER-USER", false},
		{"FORWARD flushed: the jump is gone", chainView{exists: true, policyDrop: true}, chainView{exists: true, rules: with(ours, other)}, "FORWARD", false},
	} {
		target, inPlace := planIPTables("FORWARD", c.fwd, c.user, n)
		if target != c.target || inPlace != c.inPlace {
			t.Errorf("%s: planIPTables = %q, %v; want %q, %v", c.name, target, inPlace, c.target, c.inPlace)
		}
	}
}
