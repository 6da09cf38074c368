package integration

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestStopCleansUpAndReadopts checks `launch`'s shutdown as issue 2 states
// it: SIGTERM exits 0 and removes the TUN, the bridge and the API socket;
// the attachments stay recorded, so a new launch re-adopts them and traffic
// flows again.
func TestStopCleansUpAndReadopts(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(2)
	cs := b.AddContainers(1)
	b.WaitMesh(30*time.Second, hs...)
	if err := cs[0].PingEventually(cs[1].Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	st := hs[0].Status()

	if err := hs[0].Stop(); err != nil {
		t.Errorf("daemon exit on SIGTERM: %v (want 0)", err)
	}
	links, err := hs[0].Exec("ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{st.Interface, st.Bridge} {
		for _, l := range strings.Split(links, "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":") == name {
				t.Errorf("%s still exists after a clean stop: %s", name, l)
			}
		}
	}
	if _, err := os.Stat(hs[0].Socket); err == nil {
		t.Errorf("API socket %s still exists after a clean stop", hs[0].Socket)
	}

	hs[0].Launch()
	b.WaitMesh(30*time.Second, hs...)
	if err := cs[1].PingEventually(cs[0].Addr, 20*time.Second); err != nil {
		t.Errorf("after stop and launch: %v", err)
	}
}
