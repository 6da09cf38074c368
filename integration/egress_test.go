package integration

import (
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestAttachEgress: a namespace attached with --egress and no other
// interface gets a default route through its host and reaches a server
// on the host's underlay LAN (the bed's stand-in for the outside), which
// sees the host's own underlay address (masquerade); a plain container
// that adds a default route by hand gets nowhere; both hold after a
// restart of the daemon. On three hosts, as they ship:
//
//   - open: no firewall (the kernel's forward policy accept);
//   - dockerd: Docker run as packaged in the host's namespace (it sets
//     the FORWARD policy to DROP);
//   - ufw: Debian's ufw enabled as the package configures it
//     (DEFAULT_FORWARD_POLICY="DROP").
//
// And egress leaves nothing behind: a relaunch puts back exactly the rules
// it found, and once the egress container is detached the host's rulesets
// (nft list ruleset, iptables-save) are what they were before it was
// attached, no masquerade or accept rule left, after a relaunch too, and
// when an egress container's namespace is deleted without a detach;
// after `weavewg reset` they are what they were before the first launch.
// Containers resolve names at their host's DNS throughout (ufw's input
// policy DROP would drop the queries).
func TestAttachEgress(t *testing.T) {
	for _, c := range []struct {
		name     string
		docker   bool
		firewall testbed.Firewall
	}{
		{"open", false, testbed.FirewallNone},
		{"dockerd", true, testbed.FirewallNone},
		{"ufw", false, testbed.FirewallUFW},
	} {
		t.Run(c.name, func(t *testing.T) { testAttachEgress(t, c.docker, c.firewall) })
	}
}

func testAttachEgress(t *testing.T, docker bool, fw testbed.Firewall) {
	if docker {
		if err := testbed.DockerCheck(); err != nil {
			t.Skip(err)
		}
	}
	if fw == testbed.FirewallUFW {
		if err := testbed.UFWCheck(); err != nil {
			t.Skip(err)
		}
	}
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	h1 := b.AddHost(testbed.HostOptions{NoLaunch: true, Firewall: fw})
	if docker {
		if _, err := h1.StartDockerErr(); err != nil {
			t.Skipf("dockerd cannot run here: %v", err)
		}
		if out, _ := h1.Exec("iptables", "-S", "FORWARD"); !strings.Contains(out, "-P FORWARD DROP") {
			t.Fatalf("dockerd did not set the FORWARD policy to DROP; is it stock?\n%s", out)
		}
	}
	if fw == testbed.FirewallUFW {
		// ufw's first reload adds two rules to its ip6 table that its
		// enable does not (ufw's own doing); later reloads change nothing.
		// Reloaded once, the host compares with itself after the reload
		// below.
		h1.ReloadFirewall(fw)
	}
	beforeLaunch := h1.Ruleset()
	h1.Launch()
	b.WaitMesh(30*time.Second, h1)
	plain := h1.AddContainer()
	if out, err := plain.Exec("ip", "route", "add", "default", "dev", "ethwe0"); err != nil {
		t.Fatalf("plain container: default route by hand: %v %s", err, out)
	}
	// The firewall as weavewg keeps it with no egress container.
	noEgress := h1.Ruleset()
	e, err := h1.AddContainerOpts("out", "", true)
	if err != nil {
		t.Fatal(err)
	}
	hostIP := strings.Split(h1.HostIP, "/")[0]
	if out, _ := e.Exec("ip", "route", "show", "default"); !strings.Contains(out, "default via "+hostIP) {
		t.Fatalf("egress container's default route: %q, want via %s", out, hostIP)
	}
	x := b.AddNode(150)
	// The server could answer the overlay's own addresses (through h1): only
	// h1's filter keeps the plain container from the outside.
	b.MustIP(x, "route", "add", "10.32.0.0/12", "via", h1.UnderlayIP)
	ln, err := testbed.ServeReplies(x, "0.0.0.0:8080", func(c net.Conn) string {
		return c.RemoteAddr().(*net.TCPAddr).IP.String()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seenFrom := func(c *testbed.Container) (string, error) {
		return testbed.ReadReply(c.Netns, testbed.UnderlayNet+"150:8080", 2*time.Second)
	}
	check := func(phase string) {
		t.Helper()
		from, err := seenFrom(e)
		if err != nil || from != h1.UnderlayIP {
			t.Errorf("%s: the egress container reached the outside as %q (%v), want h1's own address %s", phase, from, err, h1.UnderlayIP)
		}
		if from, err := seenFrom(plain); err == nil {
			t.Errorf("%s: a container without --egress reached the outside (as %s) by a route of its own", phase, from)
		}
	}
	check("after attach")
	// Containers still resolve names at their host's DNS (ufw's input
	// policy would drop the queries as it drops egress).
	server := hostIP + ":53"
	for _, c := range []*testbed.Container{e, plain} {
		addrs, r, err := lookupA(c, server, plain.Name+".weave.local")
		if err != nil || r.Rcode != mdns.RcodeSuccess || len(addrs) != 1 || addrs[0] != plain.Addr {
			t.Errorf("%s asked %s for %s.weave.local: %v %v %v", c, server, plain.Name, addrs, r, err)
		}
	}
	withEgress := h1.Ruleset()
	if !strings.Contains(withEgress, "masquerade") {
		t.Errorf("no masquerade rule while %s has egress:\n%s", e, withEgress)
	}
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	h1.Launch()
	b.WaitMesh(30*time.Second, h1)
	testbed.Eventually(t, 10*time.Second, "egress after a restart", func() error { _, err := seenFrom(e); return err })
	check("after a restart")
	sameRules(t, h1, "after a relaunch with an egress container", withEgress)
	// The egress container still reaches the overlay.
	if err := plain.PingEventually(e.Addr, 10*time.Second); err != nil {
		t.Error(err)
	}
	// Detach: its rules go, and a relaunch brings none back.
	e.Detach()
	sameRules(t, h1, "after the egress container was detached", noEgress)
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	h1.Launch()
	b.WaitMesh(30*time.Second, h1)
	sameRules(t, h1, "after a relaunch once the egress container was detached", noEgress)
	// An egress container that goes away without a detach (its namespace
	// deleted) takes its rules with it.
	gone, err := h1.AddContainerOpts("gone", "", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seenFrom(gone); err != nil {
		t.Errorf("a second egress container cannot get out: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "del", gone.Netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", gone.Netns, err, out)
	}
	// The daemon sees the namespace go when its veth goes, which the
	// kernel does when it destroys the namespace, later and in the
	// background (under this machine's load once 24 s after the delete).
	sameRulesWithin(t, h1, "after the egress container's namespace was deleted", noEgress, 60*time.Second)
	// Nothing reloaded the firewall: had the watcher put rules back, it
	// would have misread its own (and rewritten them every 2 s).
	if l := h1.Log(); strings.Contains(l, "firewall rules put back") {
		t.Errorf("the firewall watcher rewrote weavewg's rules with no reload:\n%s", l)
	}
	if fw == testbed.FirewallUFW {
		// `ufw reload` with the egress container attached: egress and DNS
		// keep working (the rules are on top of INPUT and FORWARD, or
		// the watcher puts them back).
		again, err := h1.AddContainerOpts("again", "", true)
		if err != nil {
			t.Fatal(err)
		}
		h1.ReloadFirewall(fw)
		testbed.Eventually(t, 10*time.Second, "egress after ufw reload", func() error { _, err := seenFrom(again); return err })
		testbed.Eventually(t, 10*time.Second, "DNS after ufw reload", func() error {
			_, _, err := lookupA(again, server, plain.Name+".weave.local")
			return err
		})
		again.Detach()
		sameRules(t, h1, "after ufw reload and the detach", noEgress)
	}
	// weavewg reset: the rulesets are what they were before the first
	// launch.
	h1.CLI("reset")
	testbed.Eventually(t, 15*time.Second, h1.Name+"'s daemon stops after reset", func() error {
		if h1.Running() {
			return errorf("still running")
		}
		return nil
	})
	sameRules(t, h1, "after weavewg reset", beforeLaunch)
}

// sameRules checks that the host's rulesets are want within 10 s (the
// firewall watcher checks every 2 s), showing the lines that differ.
func sameRules(t *testing.T, h *testbed.Host, when, want string) {
	t.Helper()
	sameRulesWithin(t, h, when, want, 10*time.Second)
}

func sameRulesWithin(t *testing.T, h *testbed.Host, when, want string, timeout time.Duration) {
	t.Helper()
	var got string
	for start := time.Now(); ; time.Sleep(time.Second) {
		if got = h.Ruleset(); got == want || time.Since(start) > timeout {
			break
		}
	}
	if got == want {
		return
	}
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	var d []string
	for _, l := range gl {
		if !slices.Contains(wl, l) {
			d = append(d, "+ "+l)
		}
	}
	for _, l := range wl {
		if !slices.Contains(gl, l) {
			d = append(d, "- "+l)
		}
	}
	t.Errorf("%s: %s's rulesets differ from before (+ now, - before; none: order or repeated lines):\n%s", when, h, strings.Join(d, "\n"))
	t.Logf("%s's rulesets before:\n%s\nnow:\n%s", h, want, got)
}
