package integration

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// TestIPAMCorruptState is issue 14 acceptance 5: the founder's and a
// joiner's ipam.db, each in turn made corrupt (garbage) and empty (zero
// bytes) while the daemon is down (kill -9). Each comes back in the same
// ring (no second seed, no split) with its containers' addresses, the
// corrupt file kept aside, everything reachable, and new attachments get
// fresh addresses.
func TestIPAMCorruptState(t *testing.T) {
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	hs := b.AddHosts(3)
	b.WaitMesh(30*time.Second, hs...)
	cs := addOn(t, b, "before", 2, hs...)
	waitIPAM(t, hs, 30*time.Second)

	attachments := func(h *testbed.Host) string {
		var as []api.Attachment
		for _, a := range waitIPAM(t, hs, 30*time.Second)[h] {
			as = append(as, a)
		}
		var s []string
		for _, a := range as {
			s = append(s, a.Name+"="+a.IP)
		}
		sort.Strings(s)
		return strings.Join(s, " ")
	}
	damage := map[string]func(path string) error{
		"corrupt": func(path string) error {
			return os.WriteFile(path, []byte(strings.Repeat("this is not a bbolt file\n", 2000)), 0o600)
		},
		"empty": func(path string) error { return os.Truncate(path, 0) },
	}
	for _, step := range []struct {
		host *testbed.Host
		how  string
	}{{hs[0], "corrupt"}, {hs[1], "empty"}, {hs[0], "empty"}, {hs[1], "corrupt"}} {
		h := step.host
		t.Logf("%s: %s ipam.db", h, step.how)
		stBefore, err := statusIPAM(hs[2])
		if err != nil {
			t.Fatal(err)
		}
		mine := attachments(h)
		h.Kill()
		path := filepath.Join(h.StateDir, "ipam.db")
		if err := damage[step.how](path); err != nil {
			t.Fatal(err)
		}
		h.Launch()
		b.WaitMesh(60*time.Second, hs...)
		waitIPAM(t, hs, 60*time.Second)
		stAfter, err := statusIPAM(h)
		if err != nil {
			t.Fatal(err)
		}
		if rb, ra := ringView(stBefore), ringView(stAfter); rb != ra {
			t.Errorf("%s (%s ipam.db): the ring changed:\nbefore:\n%s\nafter:\n%s", h, step.how, rb, ra)
		}
		if after := attachments(h); after != mine {
			t.Errorf("%s (%s ipam.db): attachments changed:\nbefore: %s\nafter:  %s", h, step.how, mine, after)
		}
		if step.how == "corrupt" {
			if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) == 0 {
				t.Errorf("%s: corrupt ipam.db not kept aside", h)
			}
			if !strings.Contains(h.Log(), "failed its check and was set aside") {
				t.Errorf("%s: no log line about the corrupt ipam.db", h)
			}
		}
		// 60 s, not 30: this test is about the ring and the addresses
		// surviving a damaged state file. Traffic between the restarted
		// host and one survivor has taken 5-30 s to resume (seen in CI once
		// just past 30 s); that latency is a known bug of its own, noted
		// for the path and keepalive logic, and TestKillAndRestart covers
		// restarts.
		reachable(t, sources(cs, hs...), cs, 60*time.Second)
	}
	cs = append(cs, addOn(t, b, "after", 1, hs...)...)
	distinct(t, cs)
	waitIPAM(t, hs, 30*time.Second)
}
