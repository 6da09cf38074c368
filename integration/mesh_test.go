package integration

import (
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestMeshPingAndTransfer is acceptance 1 of issue 2: three hosts with two
// containers each; every container pings every other, and 20 MB sent over
// TCP between containers on different hosts arrive byte-identical.
func TestMeshPingAndTransfer(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(3)
	cs := b.AddContainers(2)
	b.WaitMesh(30*time.Second, hs...)

	// The first ping may wait for the WireGuard handshake and the gossip of
	// the attachments; after that every pair must answer at once.
	if err := cs[0].PingEventually(cs[len(cs)-1].Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, r := range testbed.PingMatrix(cs, 10*time.Second) {
		if r.Err != nil {
			t.Errorf("ping %s → %s (%s): %v", r.From, r.To, r.To.Addr, r.Err)
		}
	}
	// Hosts reach containers through their own overlay address too.
	for _, h := range hs {
		for _, c := range cs {
			if out, err := h.Exec("ping", "-c", "1", "-W", "2", "-n", "-q", c.Addr); err != nil {
				t.Errorf("host %s → container %s: %v %s", h, c, err, out)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	const size = 20 << 20
	for _, p := range [][2]*testbed.Container{{cs[0], cs[2]}, {cs[5], cs[1]}} {
		r, err := testbed.Transfer(p[0], p[1], 5001, size, 60*time.Second)
		if err != nil {
			t.Fatalf("transfer: %v", err)
		}
		t.Logf("%s → %s: %d bytes in %v (%.0f Mbit/s), sha256 %x", p[0], p[1], r.Bytes, r.Took.Round(time.Millisecond), r.Mbps(), r.SHA256[:8])
	}

	st := hs[0].Status()
	for _, o := range hs[1:] {
		for _, c := range testbed.ConnsTo(st, o.Name) {
			t.Logf("%s → %s: %s direct=%v endpoint=%s rx=%d tx=%d", hs[0], o, c.State, c.Direct, c.Endpoint, c.RxBytes, c.TxBytes)
		}
	}
}
