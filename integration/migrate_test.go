package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// TestRestartWithOldStateDir is issue 11's acceptance "restart with an old
// state dir keeps every attachment": a daemon stopped under a live
// container finds the state dir as the versions before the attachment
// service wrote it (attachments.json a bare array, docker.json with its
// endpoints and addresses) and keeps every attachment: ps lists them,
// their addresses stay allocated, the container still reaches the host.
func TestRestartWithOldStateDir(t *testing.T) {
	b := newBed(t, testbed.Options{})
	h := b.AddHost(testbed.HostOptions{})
	c := h.AddContainer()
	hostIP := strings.Split(h.Status().HostIP, "/")[0]
	if err := reachHostEventually(c.Netns, hostIP, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var before []api.Attachment
	if err := json.Unmarshal([]byte(h.CLI("ps", "--json")), &before); err != nil || len(before) != 1 {
		t.Fatalf("ps before: %v %+v", err, before)
	}
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}

	// Today's formats, as the code before this change wrote them.
	a := before[0]
	oldCLI := fmt.Sprintf(`[
  {
    "netns": %q,
    "ip": %q,
    "name": %q,
    "ifname": %q,
    "host_veth": %q,
    "mtu": %d
  }
]
`, a.Netns, a.IP, a.Name, a.Interface, a.HostVeth, a.MTU)
	// A Docker address handed out but not (yet) used by an endpoint; its
	// IPAM id is the plugin's.
	dockerAddr := strings.Split(c.Addr, ".")
	dockerAddr[3] = "200"
	oldDocker := fmt.Sprintf(`{
  "networks": {
    "n0123456789abcdef": {"pool": "0.0.0.0/0", "gateway": %q}
  },
  "endpoints": {},
  "addresses": {%q: "docker:0123456789abcdef"}
}
`, h.HostIP, strings.Join(dockerAddr, "."))
	os.WriteFile(filepath.Join(h.StateDir, "attachments.json"), []byte(oldCLI), 0o600)
	os.WriteFile(filepath.Join(h.StateDir, "docker.json"), []byte(oldDocker), 0o600)

	h.Launch()
	var after []api.Attachment
	if err := json.Unmarshal([]byte(h.CLI("ps", "--json")), &after); err != nil {
		t.Fatal(err)
	}
	t.Logf("ps after the restart with the old state dir: %+v", after)
	found := map[string]api.Attachment{}
	for _, x := range after {
		found[x.Origin] = x
	}
	if x := found[api.OriginCLI]; x.IP != a.IP || x.Netns != a.Netns || x.Name != a.Name || x.HostVeth != a.HostVeth {
		t.Errorf("the CLI attachment after migration = %+v, want %+v", x, a)
	}
	if x := found[api.OriginDocker]; !strings.HasPrefix(x.IP, strings.Join(dockerAddr, ".")+"/") {
		t.Errorf("the Docker address after migration = %+v, want %s", x, strings.Join(dockerAddr, "."))
	}
	if n := podAllocs(h); n != 2 {
		t.Errorf("%d addresses allocated besides the host's after migration, want 2", n)
	}
	b2, _ := os.ReadFile(filepath.Join(h.StateDir, "attachments.json"))
	if !strings.Contains(string(b2), `"version": 2`) {
		t.Errorf("attachments.json was not rewritten in version 2:\n%s", b2)
	}
	d2, _ := os.ReadFile(filepath.Join(h.StateDir, "docker.json"))
	if strings.Contains(string(d2), "addresses") || !strings.Contains(string(d2), "n0123456789abcdef") {
		t.Errorf("docker.json after migration keeps more than its networks:\n%s", d2)
	}
	if err := reachHostEventually(c.Netns, hostIP, 10*time.Second); err != nil {
		t.Errorf("the container lost the host after the restart: %v", err)
	}
	if l, err := h.CLIErr("dns-lookup", c.Name); err != nil || !strings.Contains(l, c.Addr) {
		t.Errorf("%s does not resolve after the migration: %q %v", c.Name, l, err)
	}
}
