package daemon

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/attachment"
)

// TestMigrateOldStateDir: a state dir written by the versions before the
// attachment service (attachments.json a bare array of CLI attachments,
// docker.json with networks, endpoints and addresses) keeps every
// attachment across the upgrade: all are in ps, their addresses claimed,
// the plumbed ones published, and docker.json keeps only its networks.
func TestMigrateOldStateDir(t *testing.T) {
	cfg := testConfig(t)
	dir := t.TempDir()
	nsA := filepath.Join(dir, "a")
	os.WriteFile(nsA, nil, 0o600)
	os.MkdirAll(cfg.StateDir, 0o700)
	// Today's formats, byte for byte as the old code wrote them.
	oldCLI := `[
  {
    "netns": "` + nsA + `",
    "ip": "10.32.1.1/12",
    "name": "web",
    "ifname": "ethwe0",
    "host_veth": "vethwe01234567",
    "mtu": 1420
  }
]
`
	oldDocker := `{
  "networks": {
    "n0123456789abcdef": {
      "pool": "0.0.0.0/0",
      "gateway": "10.32.0.1/12"
    }
  },
  "endpoints": {
    "e0123456789abcdef": {
      "network_id": "n0123456789abcdef",
      "address": "10.32.2.2/12",
      "host_veth": "vethwle01234567",
      "peer_veth": "vethwge01234567",
      "joined": true,
      "name": "db",
      "container_id": "c0ffee"
    }
  },
  "addresses": {
    "10.32.2.2": "docker:1111111111111111",
    "10.32.2.3": "docker:2222222222222222"
  }
}
`
	os.WriteFile(filepath.Join(cfg.StateDir, attachmentsFile), []byte(oldCLI), 0o600)
	os.WriteFile(filepath.Join(cfg.StateDir, dockerStateFile), []byte(oldDocker), 0o600)

	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, cfg, r, tn)

	ps := d.ps()
	got := map[string]api.Attachment{}
	for _, a := range ps {
		got[a.IP] = a
	}
	if len(ps) != 3 {
		t.Fatalf("ps after migration = %+v, want 3 attachments", ps)
	}
	if a := got["10.32.1.1/12"]; a.Origin != api.OriginCLI || a.Netns != nsA || a.Name != "web" || a.HostVeth != "vethwe01234567" {
		t.Errorf("CLI attachment = %+v", a)
	}
	if a := got["10.32.2.2/12"]; a.Origin != api.OriginDocker || a.Name != "db" || a.ContainerID != "c0ffee" || a.ID != "docker:1111111111111111" {
		t.Errorf("Docker endpoint = %+v", a)
	}
	if a := got["10.32.2.3/12"]; a.Origin != api.OriginDocker || a.HostVeth != "" {
		t.Errorf("Docker address without endpoint = %+v", a)
	}
	allocs := map[string]string{}
	for _, al := range d.ipam.Allocations() {
		allocs[al.Addr.String()] = al.ID
	}
	if allocs["10.32.1.1"] != nsA || allocs["10.32.2.2"] != "docker:1111111111111111" || allocs["10.32.2.3"] != "docker:2222222222222222" {
		t.Errorf("IPAM allocations after migration = %v", allocs)
	}
	var pub []string
	for _, p := range r.attached {
		pub = append(pub, p.String())
	}
	slices.Sort(pub)
	if !slices.Equal(pub, []string{"10.32.1.1/32", "10.32.2.2/32"}) {
		t.Errorf("published %v, want the CLI attachment and the Docker endpoint", pub)
	}
	for _, n := range []string{"web", "db"} {
		if l, _ := d.dnsLookup(n); len(l.Addresses) != 1 {
			t.Errorf("%s does not resolve after migration: %+v", n, l)
		}
	}
	b, _ := os.ReadFile(filepath.Join(cfg.StateDir, dockerStateFile))
	var dj map[string]json.RawMessage
	if err := json.Unmarshal(b, &dj); err != nil || len(dj) != 1 || !strings.Contains(string(dj["networks"]), "n0123456789abcdef") {
		t.Errorf("docker.json after migration = %s, want only its networks", b)
	}
	// A second start reads the new file and migrates nothing twice.
	r2 := newFakeRouter()
	d2 := newTestDaemon(t, cfg, r2, newFakeTunnel())
	if ps2 := d2.ps(); len(ps2) != 3 {
		t.Fatalf("ps after the second start = %+v, want the same 3", ps2)
	}
}

// TestIntentUndone: a record written before its address (the daemon died
// while allocating) is undone at the next start: its IPAM id is freed, so
// nothing leaks.
func TestIntentUndone(t *testing.T) {
	cfg := testConfig(t)
	cfg.IPAMInMemory = false
	d := newTestDaemon(t, cfg, newFakeRouter(), newFakeTunnel())
	// As reserve leaves things between allocating and recording.
	if _, err := d.ipam.Allocate("cni:dead/eth0"); err != nil {
		t.Fatal(err)
	}
	if err := attachment.Save(d.attachmentsPath(), []attachment.Record{{ID: "cni:dead/eth0", Origin: attachment.OriginCNI, Netns: "/nonexistent", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	d.closers.close()

	d2 := newTestDaemon(t, cfg, newFakeRouter(), newFakeTunnel())
	// The host address is an allocation too (hostID).
	if n := len(d2.ipam.Allocations()); n != 1 {
		t.Errorf("%d allocations after restart, want the intent's freed (the host's own left)", n)
	}
	if n := len(d2.records("")); n != 0 {
		t.Errorf("%d records after restart, want the intent dropped", n)
	}
}

// TestCNIDetachAndGC: DEL of something unknown succeeds and says so; GC
// releases exactly the CNI attachments not in the valid list.
func TestCNIDetachAndGC(t *testing.T) {
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, testConfig(t), r, tn)
	dir := t.TempDir()
	for _, c := range []string{"c1", "c2", "c3"} {
		ns := filepath.Join(dir, c)
		os.WriteFile(ns, nil, 0o600)
		if _, err := d.attach(context.Background(), api.AttachRequest{Netns: ns, Origin: api.OriginCNI, ContainerID: c, IfName: "eth0", Name: c}); err != nil {
			t.Fatal(err)
		}
	}
	cli := filepath.Join(dir, "cli")
	os.WriteFile(cli, nil, 0o600)
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: cli}); err != nil {
		t.Fatal(err)
	}
	if res, err := d.detach(api.DetachRequest{Origin: api.OriginCNI, ContainerID: "nope", IfName: "eth0"}); err != nil || res.Found {
		t.Fatalf("DEL of an unknown container = %+v, %v; want success, not found", res, err)
	}
	res, err := d.detach(api.DetachRequest{Origin: api.OriginCNI, ContainerID: "c1", IfName: "eth0"})
	if err != nil || !res.Found {
		t.Fatalf("DEL c1 = %+v, %v", res, err)
	}
	if res, err := d.detach(api.DetachRequest{Origin: api.OriginCNI, ContainerID: "c1", IfName: "eth0"}); err != nil || res.Found {
		t.Fatalf("second DEL c1 = %+v, %v; want success, not found", res, err)
	}
	gc, err := d.gc(api.GCRequest{Valid: []api.GCAttachment{{ContainerID: "c2", IfName: "eth0"}}})
	if err != nil || len(gc.Released) != 1 || gc.Released[0].ContainerID != "c3" {
		t.Fatalf("GC keeping c2 = %+v, %v; want c3 released", gc, err)
	}
	var left []string
	for _, a := range d.ps() {
		left = append(left, a.Origin+":"+a.ContainerID)
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"cli:", "cni:c2"}) {
		t.Errorf("after GC: %v, want the CLI attachment and c2", left)
	}
	if l, _ := d.dnsLookup("c3"); len(l.Addresses) != 0 {
		t.Errorf("c3 still resolves after GC")
	}
	if d.ipamStatus().Allocated != 3 {
		t.Errorf("IPAM holds %d, want 2 and the host address", d.ipamStatus().Allocated)
	}
}

// TestReserveWaitsThenSaysWhy: a joining peer (no ring yet) keeps a
// Docker address request waiting until its context ends, then fails with
// the reason, and nothing stays recorded or allocated: the intent is
// undone.
func TestReserveWaitsThenSaysWhy(t *testing.T) {
	cfg := testConfig(t)
	cfg.Peers = []string{"192.0.2.99"}
	d := newTestDaemon(t, cfg, newFakeRouter(), newFakeTunnel())
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := dockerHost{d}.Reserve(ctx, "docker:0123", netip.Addr{}, netip.Prefix{})
	if err == nil || !strings.Contains(err.Error(), "no address after waiting") || !strings.Contains(err.Error(), "has not received the network's address ring") {
		t.Fatalf("Reserve on a joining peer = %v, want the reason it has no address", err)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("gave up after %s, before its context ended", took)
	}
	if n := len(d.records("")); n != 0 {
		t.Errorf("%d records left after a failed reserve", n)
	}
	if ready := d.attachReady(); ready == "" {
		t.Errorf("attachReady says ready on a peer without the ring")
	}
}

// TestDetachByIdentity: a CLI attachment is found by the namespace the
// path opens (two links to one file stand for /run/netns/c1 and
// /proc/PID/ns/net), and by the path it was attached as once the
// namespace is gone.
func TestDetachByIdentity(t *testing.T) {
	d := newTestDaemon(t, testConfig(t), newFakeRouter(), newFakeTunnel())
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, nil, 0o600)
	if err := os.Link(a, b); err != nil {
		t.Fatal(err)
	}
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: a}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: b}); err == nil || !strings.Contains(err.Error(), "already attached (as "+a+")") {
		t.Errorf("attach by another path to the same namespace: %v, want already attached (as %s)", err, a)
	}
	if res, err := d.detach(api.DetachRequest{Netns: b}); err != nil || !res.Found {
		t.Fatalf("detach by another path = %+v, %v", res, err)
	}
	if n := len(d.ps()); n != 0 {
		t.Fatalf("%d attachments after detach, want 0", n)
	}

	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: a}); err != nil {
		t.Fatal(err)
	}
	os.Remove(a)
	os.Remove(b)
	if _, err := d.detach(api.DetachRequest{Netns: b}); err == nil {
		t.Errorf("detach by a path that never named it, namespace gone: succeeded")
	}
	if res, err := d.detach(api.DetachRequest{Netns: a}); err != nil || !res.Found {
		t.Fatalf("detach by the path it was attached as, namespace gone = %+v, %v", res, err)
	}
}

// TestHostVethDeletedReleases: the deletion of an attachment's host veth
// (its namespace died) frees its address and withdraws its name at once;
// another link's deletion changes nothing.
func TestHostVethDeletedReleases(t *testing.T) {
	d := newTestDaemon(t, testConfig(t), newFakeRouter(), newFakeTunnel())
	ns := filepath.Join(t.TempDir(), "c")
	os.WriteFile(ns, nil, 0o600)
	a, err := d.attach(context.Background(), api.AttachRequest{Netns: ns, Name: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	d.hostVethDeleted("vethwe-other")
	if n := len(d.ps()); n != 1 {
		t.Fatalf("another link's deletion: %d attachments, want 1", n)
	}
	d.hostVethDeleted(a.HostVeth)
	if n := len(d.ps()); n != 0 {
		t.Errorf("host veth deleted: %d attachments, want 0", n)
	}
	if l, _ := d.dnsLookup("gone"); len(l.Addresses) != 0 {
		t.Errorf("the name still resolves to %v", l.Addresses)
	}
	if n := d.ipamStatus().Allocated; n != 1 {
		t.Errorf("IPAM holds %d addresses, want only the host address", n)
	}
}

// TestSameNamespaceTwoPaths: of two attaches at once of one namespace by
// two paths (a hard link: same device and inode), exactly one succeeds.
func TestSameNamespaceTwoPaths(t *testing.T) {
	d := newTestDaemon(t, testConfig(t), newFakeRouter(), newFakeTunnel())
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, nil, 0o600)
	if err := os.Link(a, b); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, p := range []string{a, b} {
		go func() {
			_, err := d.attach(context.Background(), api.AttachRequest{Netns: p})
			errs <- err
		}()
	}
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) {
		t.Fatalf("two attaches of one namespace by two paths: %v and %v; want exactly one to succeed", e1, e2)
	}
	if n := d.ipamStatus().Allocated; n != 2 {
		t.Errorf("%d addresses allocated, want 1 and the host address", n)
	}
}

// TestDeletedNetnsReleasedAtOnce: an attachment whose namespace path is gone
// and which no process is in is released on the next check, without the
// grace for a namespace that may still live.
func TestDeletedNetnsReleasedAtOnce(t *testing.T) {
	d := newTestDaemon(t, testConfig(t), newFakeRouter(), newFakeTunnel())
	ns := filepath.Join(t.TempDir(), "c")
	os.WriteFile(ns, nil, 0o600)
	if _, err := d.attach(context.Background(), api.AttachRequest{Netns: ns, Name: "gone"}); err != nil {
		t.Fatal(err)
	}
	d.releaseVanished(time.Now())
	if n := len(d.ps()); n != 1 {
		t.Fatalf("namespace still there: %d attachments, want 1", n)
	}
	os.Remove(ns)
	d.releaseVanished(time.Now())
	if n := len(d.ps()); n != 0 {
		t.Errorf("namespace path gone, no process in it: %d attachments after one check, want 0", n)
	}
	if l, _ := d.dnsLookup("gone"); len(l.Addresses) != 0 {
		t.Errorf("the name still resolves to %v", l.Addresses)
	}
}
