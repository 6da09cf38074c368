package integration

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// Container lifecycle (issue 15): a namespace is the namespace itself,
// whatever it is called.

// TestDetachAnySpelling is issue 15's acceptance 4: a namespace attached
// by its `ip netns` name, its /run path, its /var/run path or the PID of a
// process in it is detached by any other of these, and attaching it again
// by another spelling says it is attached already.
func TestDetachAnySpelling(t *testing.T) {
	b := newBed(t, testbed.Options{})
	h := b.AddHost(testbed.HostOptions{})
	name := b.Prefix + "spell"
	if err := b.NewNetnsFast(name); err != nil {
		t.Fatal(err)
	}
	// A process in the namespace, for its PID (ip netns exec execs sleep).
	sleep := exec.Command("ip", "netns", "exec", name, "sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })

	spellings := []string{
		name,
		filepath.Join("/run/netns", name),
		filepath.Join("/var/run/netns", name),
		strconv.Itoa(sleep.Process.Pid),
	}
	ps := func() []api.Attachment {
		t.Helper()
		var as []api.Attachment
		if err := json.Unmarshal([]byte(h.CLI("ps", "--json")), &as); err != nil {
			t.Fatalf("ps --json: %v", err)
		}
		return as
	}
	for i, attachAs := range spellings {
		out := h.CLI("attach", attachAs)
		t.Logf("attach %s: %s", attachAs, strings.TrimSpace(out))
		for j, again := range spellings {
			if j == i {
				continue
			}
			out, err := h.CLIErr("attach", again)
			if err == nil {
				t.Errorf("attached by %s, a second attach by %s succeeded: %s", attachAs, again, out)
			} else if !strings.Contains(out, "already attached") {
				t.Errorf("attached by %s, a second attach by %s: want \"already attached\", got %s", attachAs, again, strings.TrimSpace(out))
			}
		}
		if n := len(ps()); n != 1 {
			t.Errorf("attached by %s and tried by the others: ps lists %d attachments, want 1", attachAs, n)
		}
		detachAs := spellings[(i+1)%len(spellings)]
		if out, err := h.CLIErr("detach", detachAs); err != nil {
			t.Errorf("attached by %s, detach by %s: %v", attachAs, detachAs, err)
			// Leave nothing for the next round.
			h.CLIErr("detach", attachAs)
			continue
		} else {
			t.Logf("attached by %s, detached by %s: %s", attachAs, detachAs, strings.TrimSpace(out))
		}
		if as := ps(); len(as) != 0 {
			t.Errorf("attached by %s, detached by %s: ps still lists %+v", attachAs, detachAs, as)
		}
		if out, err := exec.Command("ip", "-n", name, "-o", "link", "show", "ethwe0").CombinedOutput(); err == nil {
			t.Errorf("attached by %s, detached by %s: ethwe0 still in the namespace: %s", attachAs, detachAs, out)
		}
	}
}
