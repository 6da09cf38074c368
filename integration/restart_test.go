package integration

import (
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestKillAndRestart is acceptance 4 of issue 2: kill -9 a daemon, launch it
// again with the same state dir; the others reconnect by themselves, traffic
// between its containers and the rest resumes (the attachments are
// re-adopted), and its identity is unchanged.
//
// The daemon killed is h1, which was launched with no peers: only the others'
// redialling can bring the mesh back.
func TestKillAndRestart(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(3)
	cs := b.AddContainers(1)
	b.WaitMesh(30*time.Second, hs...)
	if err := cs[1].PingEventually(cs[0].Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	before := testbed.Self(hs[0].Status())
	if before == nil {
		t.Fatalf("%s: status has no self peer", hs[0])
	}

	hs[0].Kill()
	// The others notice: their connection to h1 leaves the established state.
	testbed.Eventually(t, 30*time.Second, "h2 and h3 notice h1 is gone", func() error {
		for _, h := range hs[1:] {
			st, err := h.StatusErr()
			if err != nil {
				return err
			}
			if testbed.Established(st, hs[0].Name) {
				return errorf("%s still shows h1 established", h)
			}
		}
		return nil
	})
	if err := cs[1].Ping(cs[0].Addr); err == nil {
		t.Logf("note: %s still answered with its daemon dead (bridge-local path?)", cs[0])
	}

	hs[0].Launch()
	after := testbed.Self(hs[0].Status())
	if after == nil || after.PublicKey != before.PublicKey || after.Name != before.Name {
		t.Fatalf("identity changed across restart: before %+v, after %+v", before, after)
	}
	b.WaitMesh(45*time.Second, hs...)

	st := hs[0].Status()
	found := false
	for _, a := range st.Attached {
		if a.IP == cs[0].IP {
			found = true
		}
	}
	if !found {
		t.Errorf("restarted %s does not list its attachment %s: %+v", hs[0], cs[0].IP, st.Attached)
	}
	for _, c := range cs[1:] {
		if err := c.PingEventually(cs[0].Addr, 30*time.Second); err != nil {
			t.Errorf("after restart: %v", err)
		}
		if err := cs[0].PingEventually(c.Addr, 10*time.Second); err != nil {
			t.Errorf("after restart: %v", err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if _, err := testbed.Transfer(cs[2], cs[0], 5005, 2<<20, 30*time.Second); err != nil {
		t.Errorf("transfer to the restarted host: %v", err)
	}
}
