package integration

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestStopCleansUpAndReadopts checks `launch`'s shutdown: SIGTERM exits 0
// and removes the TUN and the API socket but keeps the bridge, so two
// containers on the host keep pinging each other with no loss while the
// daemon is down and relaunched, under ufw's default-deny FORWARD (issue
// 15's acceptance 5, as Weave Net's bridge survived `weave stop`); the
// attachments stay recorded, so a new launch re-adopts them and the
// remote pair resumes (the time is printed). `weavewg reset` then removes
// the bridge and every firewall rule and table of weavewg's.
func TestStopCleansUpAndReadopts(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	h1 := b.AddHost(testbed.HostOptions{Firewall: testbed.FirewallIPTables, NoLaunch: true})
	before := h1.Ruleset()
	h1.Launch()
	h2 := b.AddHost(testbed.HostOptions{})
	hs := []*testbed.Host{h1, h2}
	b.WaitMesh(30*time.Second, hs...)
	local := []*testbed.Container{h1.AddContainer(), h1.AddContainer()}
	remote := h2.AddContainer()
	for _, c := range []*testbed.Container{local[1], remote} {
		if err := local[0].PingEventually(c.Addr, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	st := h1.Status()

	// The local pair pings through the stop and the relaunch: 10 a second.
	ping := exec.Command("ip", "netns", "exec", local[0].Netns, "ping", "-n", "-i", "0.1", "-w", "3600", local[1].Addr)
	var pingOut strings.Builder
	ping.Stdout, ping.Stderr = &pingOut, &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	pingDone := false
	defer func() {
		if !pingDone {
			ping.Process.Kill()
			ping.Wait()
		}
	}()
	// The remote pair too, timestamped (-D), to see when it resumes.
	rping := exec.Command("ip", "netns", "exec", remote.Netns, "ping", "-D", "-n", "-i", "0.1", "-W", "0.1", "-w", "3600", local[0].Addr)
	var rpingOut strings.Builder
	rping.Stdout, rping.Stderr = &rpingOut, &rpingOut
	if err := rping.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { rping.Process.Kill(); rping.Wait() }()
	time.Sleep(time.Second)

	if err := h1.Stop(); err != nil {
		t.Errorf("daemon exit on SIGTERM: %v (want 0)", err)
	}
	if !hasLink(t, h1, st.Bridge) {
		t.Errorf("the bridge %s is gone after a stop; local containers lose each other", st.Bridge)
	}
	if hasLink(t, h1, st.Interface) {
		t.Errorf("%s still exists after a clean stop", st.Interface)
	}
	if _, err := os.Stat(h1.Socket); err == nil {
		t.Errorf("API socket %s still exists after a clean stop", h1.Socket)
	}
	time.Sleep(2 * time.Second) // down a while, as during an upgrade

	launched := time.Now()
	h1.Launch()
	apiUp := time.Now()
	if err := remote.PingEventually(local[0].Addr, 30*time.Second); err != nil {
		t.Errorf("after stop and launch: %v", err)
	}
	time.Sleep(time.Second)
	if first, ok := firstReplyAfter(rpingOut.String(), launched); ok {
		t.Logf("remote pair: first reply %.2fs after the relaunch started (its API answered after %.2fs)", first.Sub(launched).Seconds(), apiUp.Sub(launched).Seconds())
	} else {
		t.Logf("remote pair: no timestamped reply after the relaunch in ping's output")
	}

	// SIGINT makes ping print its summary.
	ping.Process.Signal(os.Interrupt)
	ping.Wait()
	pingDone = true
	sent, recv, err := pingSummary(pingOut.String())
	if err != nil {
		t.Fatalf("%v:\n%s", err, pingOut.String())
	}
	t.Logf("local pair through stop and relaunch: %d sent, %d received", sent, recv)
	if sent < 30 || recv != sent {
		t.Errorf("local pair through stop and relaunch: %d sent, %d received; want no loss", sent, recv)
	}

	// reset removes everything.
	t.Logf("h1# weavewg reset\n%s", h1.CLI("reset"))
	testbed.Eventually(t, 15*time.Second, "h1's daemon stops after reset", func() error {
		if h1.Running() {
			return fmt.Errorf("still running")
		}
		return nil
	})
	for _, name := range []string{st.Interface, st.Bridge} {
		if hasLink(t, h1, name) {
			t.Errorf("%s still exists after reset", name)
		}
	}
	if after := h1.Ruleset(); after != before {
		t.Errorf("the ruleset after reset differs from before the first launch:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// hasLink reports whether the host has a link called name.
func hasLink(t *testing.T, h *testbed.Host, name string) bool {
	t.Helper()
	links, err := h.Exec("ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":") == name {
			return true
		}
	}
	return false
}

var pingSummaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingSummary reads ping's "N packets transmitted, M received".
func pingSummary(out string) (sent, recv int, err error) {
	m := pingSummaryRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("no ping summary")
	}
	sent, _ = strconv.Atoi(m[1])
	recv, _ = strconv.Atoi(m[2])
	return sent, recv, nil
}

var pingReplyRE = regexp.MustCompile(`(?m)^\[(\d+)\.(\d+)\] \d+ bytes from`)

// firstReplyAfter finds the first reply of `ping -D` stamped after t.
func firstReplyAfter(out string, t time.Time) (time.Time, bool) {
	for _, m := range pingReplyRE.FindAllStringSubmatch(out, -1) {
		sec, _ := strconv.ParseInt(m[1], 10, 64)
		frac, _ := strconv.ParseFloat("0."+m[2], 64)
		at := time.Unix(sec, int64(frac*1e9))
		if at.After(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// TestResetHostOnly: with the daemon stopped, `weavewg reset --host-only`
// removes the bridge and every rule a stop keeps (the ruleset is what it
// was before the first launch) and keeps the network state, so the next
// launch re-adopts the container; while a daemon runs it refuses.
func TestResetHostOnly(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	h := b.AddHost(testbed.HostOptions{Firewall: testbed.FirewallIPTables, NoLaunch: true})
	before := h.Ruleset()
	h.Launch()
	c := h.AddContainer()
	hostIP := strings.Split(h.Status().HostIP, "/")[0]
	if err := reachHostEventually(c.Netns, hostIP, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st := h.Status()
	if out, err := h.CLIErr("reset", "--host-only"); err == nil || !strings.Contains(out, "stop it first") {
		t.Errorf("reset --host-only with the daemon running: %v %s; want a refusal", err, out)
	}
	if !hasLink(t, h, st.Bridge) {
		t.Fatalf("the refused reset --host-only removed the bridge")
	}
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	out := h.CLI("reset", "--host-only")
	t.Logf("h1# weavewg reset --host-only\n%s", out)
	if hasLink(t, h, st.Bridge) {
		t.Errorf("the bridge %s is still there after reset --host-only", st.Bridge)
	}
	if after := h.Ruleset(); after != before {
		t.Errorf("the ruleset after reset --host-only differs from before the first launch:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if out, err := h.CLIErr("reset", "--host-only"); err != nil {
		t.Errorf("a second reset --host-only (nothing left): %v %s", err, out)
	}
	h.Launch()
	if err := reachHostEventually(c.Netns, hostIP, 10*time.Second); err != nil {
		t.Errorf("after reset --host-only and launch, the container is not back: %v", err)
	}
}
