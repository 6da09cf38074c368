package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestAttachWaitsForAddressSpace is issue 13's acceptance 5: attach right
// after launch on a joining host waits for the address ring and succeeds;
// with no peer reachable it fails after --timeout with a sentence that
// says why, and leaves nothing allocated or attached.
func TestAttachWaitsForAddressSpace(t *testing.T) {
	b := newBed(t, testbed.Options{})
	// h2 joins h1, which starts only later: the attach on h2 right after
	// its launch has to wait for the address ring, however fast the
	// machine.
	h1 := b.AddHost(testbed.HostOptions{NoLaunch: true})
	h2 := b.AddHost(testbed.HostOptions{NoLaunch: true})
	h2.Launch()
	ns2 := b.Prefix + "h2-early"
	if err := b.NewNetnsFast(ns2); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out  string
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		out, err := h2.CLIErr("attach", "--json", "--name", "early", testbed.NetnsPath(ns2))
		done <- result{out, err, time.Since(start)}
	}()
	time.Sleep(3 * time.Second)
	h1.Launch()
	r := <-done
	t.Logf("h2# weavewg attach right after launch, h1 up 3s later: %.1fs:\n%s", r.took.Seconds(), r.out)
	if r.err != nil {
		t.Fatalf("attach on the joining host failed instead of waiting: %v", r.err)
	}
	a, err := testbed.ParseAttachOutput(r.out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.out, "waiting for address space") {
		t.Errorf("attach waited %.1fs with no progress line", r.took.Seconds())
	}
	h1IP := strings.Split(h1.Status().HostIP, "/")[0]
	// h1 is not exposed: it answers DNS, not ping.
	if err := reachHostEventually(ns2, h1IP, 20*time.Second); err != nil {
		t.Fatalf("the early container does not reach h1's DNS at %s: %v", h1IP, err)
	}
	t.Logf("early container %s reaches h1 at %s", a.IP, h1IP)

	// h3 is told of a peer that does not exist: nothing will answer.
	const nobody = testbed.UnderlayNet + "99"
	h3 := b.AddHost(testbed.HostOptions{Peers: []string{nobody}})
	ns := b.Prefix + "h3-lonely"
	if err := b.NewNetnsFast(ns); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	out, err := h3.CLIErr("attach", "--timeout", "4s", "--name", "lonely", testbed.NetnsPath(ns))
	took := time.Since(start)
	t.Logf("h3# weavewg attach --timeout 4s (no peer reachable), %.1fs:\n%s", took.Seconds(), out)
	if err == nil {
		t.Fatalf("attach with no peer reachable succeeded: %s", out)
	}
	for _, want := range []string{"waiting for address space", "no address after waiting", "no peer is reachable", nobody + ":6783"} {
		if !strings.Contains(out, want) {
			t.Errorf("attach output lacks %q", want)
		}
	}
	if took < 4*time.Second {
		t.Errorf("attach gave up after %s, before its 4s timeout", took)
	}
	st := h3.Status()
	if len(st.Attached) != 0 || st.IPAM.Allocated != 0 {
		t.Errorf("a failed attach left %d attachments and %d allocations", len(st.Attached), st.IPAM.Allocated)
	}
	if link, _ := h3.Exec("ip", "-o", "link", "show", "type", "veth"); strings.Contains(link, "vethwe") {
		t.Errorf("a failed attach left a veth: %s", link)
	}
}
