package integration

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestFirewall is issue 13's acceptance for hosts with a default-deny
// forward policy and no Docker, one host per firewall backend:
// iptables-nft (ufw's `iptables -P FORWARD DROP`), iptables-legacy, plain
// nftables. No rule is added to any host for weavewg.
//
//  3. Attached containers reach and are reached, across hosts and on the
//     same host (the bridge is filtered too when br_netfilter is on).
//  2. After a firewall reload (`iptables -F FORWARD; iptables -P FORWARD
//     DROP`, or the nftables table deleted and made again) traffic resumes
//     without restarting weavewg; the time it took is logged.
//  4. SIGTERM keeps weavewg's rules (the bridge stays and local traffic
//     flows on, TestStopCleansUpAndReadopts); after `weavewg reset` no
//     rule, chain or table of weavewg's remains: the host's ruleset is
//     what it was before the first launch.
func TestFirewall(t *testing.T) {
	for _, c := range []string{"iptables-nft-save", "iptables-legacy", "iptables-legacy-save", "nft"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s is not installed (make test installs iptables and nftables)", c)
		}
	}
	b := newBed(t, testbed.Options{})
	fws := []testbed.Firewall{testbed.FirewallIPTables, testbed.FirewallIPTablesLegacy, testbed.FirewallNftables}
	var hs []*testbed.Host
	var before []string
	for _, fw := range fws {
		h := b.AddHost(testbed.HostOptions{Firewall: fw, NoLaunch: true})
		hs = append(hs, h)
		before = append(before, h.Ruleset())
		h.Launch()
	}
	b.WaitMesh(45*time.Second, hs...)
	cs := b.AddContainers(1, hs...)
	cs = append(cs, hs[0].AddContainer()) // a second one on h1: traffic over its bridge
	for _, r := range testbed.PingMatrix(cs, 30*time.Second) {
		if r.Err != nil {
			t.Errorf("%s → %s (%s): %v", r.From, r.To, r.To.Addr, r.Err)
		}
	}
	if t.Failed() {
		for _, h := range hs {
			out, _ := h.Exec("nft", "list", "ruleset")
			t.Logf("%s ruleset:\n%s", h, out)
		}
		t.FailNow()
	}

	// 2. A firewall reload on each host in turn.
	for i, h := range hs {
		h.ReloadFirewall(fws[i])
		start := time.Now()
		for _, other := range cs {
			if other.Host == h {
				continue
			}
			if err := other.PingEventually(cs[i].Addr, 30*time.Second); err != nil {
				t.Errorf("after the %s firewall reload on %s: %s → %s: %v\n%s", fws[i], h, other, cs[i], err, h.Log())
			}
			if err := cs[i].PingEventually(other.Addr, 30*time.Second); err != nil {
				t.Errorf("after the %s firewall reload on %s: %s → %s: %v", fws[i], h, cs[i], other, err)
			}
		}
		t.Logf("%s (%s): traffic resumed %.1fs after the firewall reload", h, fws[i], time.Since(start).Seconds())
	}

	// 4. SIGTERM keeps the rules; reset removes them: the ruleset is what
	// it was.
	for i, h := range hs {
		if err := h.Stop(); err != nil {
			t.Errorf("%s: stop: %v", h, err)
		}
		if after := h.Ruleset(); !strings.Contains(after, "weavewg") {
			t.Errorf("%s (%s): weavewg's rules are gone after SIGTERM; local traffic stops:\n%s", h, fws[i], after)
		}
	}
	for i, h := range hs {
		h.Launch()
		h.CLI("reset")
		testbed.Eventually(t, 15*time.Second, h.Name+"'s daemon stops after reset", func() error {
			if h.Running() {
				return errors.New("still running")
			}
			return nil
		})
		if after := h.Ruleset(); after != before[i] {
			t.Errorf("%s (%s): the ruleset differs after reset:\nbefore:\n%s\nafter:\n%s", h, fws[i], before[i], after)
		}
	}
}
