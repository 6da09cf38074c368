package hostnet

import (
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/internal/netnstest"
)

// TestCloseKeepingBridge: a daemon stop leaves the bridge, its ports and
// weavewg's forward rules, so two containers on the bridge keep reaching
// each other under FORWARD DROP with no Host running; the next New adopts
// it all; Close (reset) then removes the bridge and every rule.
func TestCloseKeepingBridge(t *testing.T) {
	requireFirewallTools(t, "iptables-nft", "ping")
	h := oneHost(t)
	in := func(args ...string) string {
		t.Helper()
		return run(t, append([]string{"ip", "netns", "exec", h.ns.Name}, args...)...)
	}
	bridged := strings.TrimSpace(in("sysctl", "-n", "net.bridge.bridge-nf-call-iptables")) == "1"
	in("iptables-nft", "-P", "FORWARD", "DROP")
	before := ruleset(t, h.ns)
	h.start(t)
	c1, c2 := newNetns(t, "c1"), newNetns(t, "c2")
	for i, c := range []*netnstest.NS{c1, c2} {
		if _, err := h.host.Attach(AttachSpec{Netns: c.Path, IP: netipPrefix([]string{"10.32.1.1/12", "10.32.1.2/12"}[i])}); err != nil {
			t.Fatal(err)
		}
	}
	ping := func() bool {
		return exec.Command("ip", "netns", "exec", c1.Name, "ping", "-c", "1", "-w", "4", "10.32.1.2").Run() == nil
	}
	if !ping() {
		t.Fatal("no ping between the containers while running")
	}
	if err := h.host.CloseKeepingBridge(); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "-n", h.ns.Name, "link", "show", "weavewg").Run(); err != nil {
		t.Fatal("the bridge is gone after CloseKeepingBridge")
	}
	if !ping() {
		t.Errorf("the containers lost each other with the host networking stopped (br_netfilter on: %v):\n%s", bridged, in("iptables-nft", "-L", "FORWARD", "-v"))
	}
	h.start(t) // adopts the bridge, the rules, the filter
	if !ping() {
		t.Error("no ping after New adopted the kept bridge")
	}
	if err := h.host.Close(); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "-n", h.ns.Name, "link", "show", "weavewg").Run(); err == nil {
		t.Error("the bridge is still there after Close")
	}
	if after := ruleset(t, h.ns); after != before {
		t.Errorf("the ruleset differs after Close:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestNewBuildsFilterWhole: a relaunch (New after CloseKeepingBridge) given
// the attachments' isolated subnets and egress addresses builds the
// filter and the host's accept rules with them at once, exactly as the
// Set calls left them: no moment without isolation or egress.
func TestNewBuildsFilterWhole(t *testing.T) {
	requireFirewallTools(t, "iptables-nft")
	h := oneHost(t)
	h.cfg.HostIP, h.cfg.Overlay = netipPrefix("10.32.0.1/16"), netipPrefix("10.32.0.0/12")
	run(t, "ip", "netns", "exec", h.ns.Name, "iptables-nft", "-P", "FORWARD", "DROP")
	h.start(t)
	subnets := []netip.Prefix{netipPrefix("10.33.1.0/24"), netipPrefix("10.32.0.0/16")}
	egress := []netip.Addr{netip.MustParseAddr("10.32.0.9"), netip.MustParseAddr("10.32.0.5")}
	if err := errors.Join(h.host.SetSubnets(subnets), h.host.SetEgress(egress)); err != nil {
		t.Fatal(err)
	}
	set := ruleset(t, h.ns)
	if !strings.Contains(set, "masquerade") || !strings.Contains(set, "10.33.1.0/24") || !strings.Contains(set, "-i weavewg -m comment") {
		t.Fatalf("the Set calls made no egress or isolation rules:\n%s", set)
	}
	if err := h.host.CloseKeepingBridge(); err != nil {
		t.Fatal(err)
	}
	h.cfg.Subnets, h.cfg.Egress = subnets, egress
	h.start(t)
	if got := ruleset(t, h.ns); got != set {
		t.Errorf("New with the subnets and egress: the rules differ from the Set calls':\nthen:\n%s\nnow:\n%s", set, got)
	}
}
