package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

const podmanImage = "weavewg/busybox:test"

// TestPodman is issue 17's acceptance 2 with a real runtime: Debian's
// Podman 4.3 with the CNI backend (a containers.conf of the test's own,
// pointed at the host's `weavewg cni install` directories; the image
// imported from a busybox-static rootfs, no registry). `podman run
// --network NET` on two namespace hosts: ping across hosts and wget by
// name; `podman rm -f` frees the address and the name within 5 s.
func TestPodman(t *testing.T) {
	needTool(t, "podman")
	b := newBed(t, testbed.Options{})
	tarPath, err := b.BusyboxTar(dockerPage + "\n")
	if err != nil {
		t.Skip(err)
	}
	hs := b.AddHosts(2)
	b.WaitMesh(30*time.Second, hs...)
	ps := make([]*testbed.Podman, len(hs))
	for i, h := range hs {
		c, err := h.InstallCNI("", "--link", "--cni-version", "1.0.0")
		if err != nil {
			t.Fatal(err)
		}
		if ps[i], err = testbed.NewPodman(c); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ps[i].Cleanup) // before the bed's own cleanup: last in, first out
		if out, err := ps[i].Run("import", tarPath, podmanImage); err != nil {
			t.Skipf("podman cannot import an image here: %v (%s)", err, out)
		}
	}
	// Podman with the CNI backend does not take DNS from the CNI result:
	// the host's weavewg DNS is given as for docker run (weavewg dns-args).
	dnsFlags := func(h *testbed.Host) []string {
		return []string{"--dns", strings.Split(h.Status().HostIP, "/")[0], "--dns-search", "weave.local"}
	}
	run := func(i int, args ...string) string {
		t.Helper()
		out, err := ps[i].Run(args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	web := append(append([]string{"run", "-d", "--name", "web", "--network", ps[0].CNI.Net}, dnsFlags(hs[0])...),
		podmanImage, "httpd", "-f", "-p", "80", "-h", "/www")
	if out, err := ps[0].Run(web...); err != nil {
		t.Fatalf("podman run --network %s on h1: %v (%s)", ps[0].CNI.Net, err, out)
	}
	run(1, append(append([]string{"run", "-d", "--name", "client", "--network", ps[1].CNI.Net}, dnsFlags(hs[1])...),
		podmanImage, "sleep", "3600")...)

	attachment := func(h *testbed.Host, name string) *api.Attachment {
		for _, a := range h.Status().Attached {
			if a.Origin == api.OriginCNI && a.Name == name {
				return &a
			}
		}
		return nil
	}
	w := attachment(hs[0], "web")
	if w == nil {
		t.Fatalf("weavewg ps on h1 does not list the Podman container web: %+v", hs[0].Status().Attached)
	}
	webIP := strings.Split(w.IP, "/")[0]
	t.Logf("Podman containers: web %s on h1 (%s), client on h2", w.IP, w.ContainerID)

	testbed.Eventually(t, 20*time.Second, "client pings web across hosts", func() error {
		_, err := ps[1].Run("exec", "client", "ping", "-c", "1", "-W", "1", webIP)
		return err
	})
	testbed.Eventually(t, 20*time.Second, "client fetches http://web.weave.local/", func() error {
		out, err := ps[1].Run("exec", "client", "timeout", "5", "wget", "-q", "-O", "-", "http://web.weave.local/")
		if err != nil {
			return err
		}
		if !strings.Contains(out, dockerPage) {
			return fmt.Errorf("got %q", out)
		}
		return nil
	})

	// podman rm -f: the address and the name are free within 5 s.
	alloc := hs[0].Status().IPAM.Allocated
	start := time.Now()
	run(0, "rm", "-f", "-t", "0", "web")
	rmTook := time.Since(start)
	var freed, unnamed time.Duration
	deadline := start.Add(5 * time.Second)
	for time.Now().Before(deadline) && (freed == 0 || unnamed == 0) {
		if freed == 0 && attachment(hs[0], "web") == nil && hs[0].Status().IPAM.Allocated == alloc-1 {
			freed = time.Since(start)
		}
		if _, err := hs[1].CLIErr("dns-lookup", "web"); unnamed == 0 && err != nil {
			unnamed = time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("podman rm -f web took %.2fs; address free after %.2fs, name gone on h2 after %.2fs", rmTook.Seconds(), freed.Seconds(), unnamed.Seconds())
	if freed == 0 {
		t.Errorf("web's address is not free on h1 5 s after podman rm -f (allocated %d, was %d)", hs[0].Status().IPAM.Allocated, alloc)
	}
	if unnamed == 0 {
		t.Errorf("web still resolves on h2 5 s after podman rm -f")
	}
}
