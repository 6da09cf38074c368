package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNewSweepsDeadOwners: a namespace left by a test process that died
// before its cleanup (its PID in the name, the process gone) is deleted by
// the next New; one whose owner lives, and the new one, stay.
func TestNewSweepsDeadOwners(t *testing.T) {
	RequireNetAdmin(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadName := fmt.Sprintf("wwg%d-0001-x", dead.Process.Pid)
	liveName := fmt.Sprintf("wwg%d-0001-x", os.Getppid())
	// A dead owner's namespace in which a process still runs (a test
	// bed's daemon): left for the test bed's Sweep, which kills it first.
	busyName := fmt.Sprintf("wwg%d-0002-x", dead.Process.Pid)
	for _, n := range []string{deadName, liveName, busyName} {
		Run(t, "ip", "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	sleeper := exec.Command("ip", "netns", "exec", busyName, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	for i := 0; ; i++ { // until the process is in the namespace
		if out, _ := exec.Command("ip", "netns", "pids", busyName).Output(); len(out) > 0 {
			break
		}
		if i == 100 {
			t.Fatal("the process never entered its namespace")
		}
		time.Sleep(20 * time.Millisecond)
	}
	sweepOnce = sync.Once{} // as in a fresh process
	ns := New(t, "sweep")
	if _, err := os.Stat("/var/run/netns/" + deadName); err == nil {
		t.Errorf("dead owner's namespace %s not swept", deadName)
	}
	if _, err := os.Stat("/var/run/netns/" + busyName); err != nil {
		t.Errorf("dead owner's namespace %s swept with a process still in it: %v", busyName, err)
	}
	if _, err := os.Stat("/var/run/netns/" + liveName); err != nil {
		t.Errorf("live owner's namespace %s swept: %v", liveName, err)
	}
	if want := fmt.Sprintf("wwg%d-", os.Getpid()); !strings.HasPrefix(ns.Name, want) || !ownedName.MatchString(ns.Name) {
		t.Errorf("New named its namespace %q, want the owner's PID (%s...) in a name Stale can read", ns.Name, want)
	}
	if Stale(ns.Name) {
		t.Errorf("Stale(%q) for this live process's namespace", ns.Name)
	}
}
