package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// cniResult is the part of a CNI result the tests read.
type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	Interfaces []struct {
		Name    string `json:"name"`
		Mac     string `json:"mac"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
	DNS struct {
		Nameservers []string `json:"nameservers"`
		Search      []string `json:"search"`
	} `json:"dns"`
}

// cniError is a CNI error object.
type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
}

func cniAttachments(h *testbed.Host) []api.Attachment {
	var out []api.Attachment
	for _, a := range h.Status().Attached {
		if a.Origin == api.OriginCNI {
			out = append(out, a)
		}
	}
	return out
}

// TestCNI is issue 17's acceptance 1 and 3 with a real CNI client,
// cnitool (testbed.CnitoolVersion, built from the module proxy): three
// hosts, 20 pods each added concurrently get distinct addresses, reach
// each other across hosts and by name; CHECK fails once the interface is
// removed by hand; DEL twice is success; GC with an empty valid list frees
// all; a daemon killed (-9) between ADD and DEL: ADD fails meanwhile with
// a CNI error, DEL succeeds once the daemon is back and nothing leaks.
func TestCNI(t *testing.T) {
	needTool(t, "unshare")
	tool, err := testbed.Cnitool()
	if err != nil {
		t.Skip(err)
	}
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(3)
	b.WaitMesh(30*time.Second, hs...)
	cnis := make([]*testbed.CNI, len(hs))
	for i, h := range hs {
		if cnis[i], err = h.InstallCNI(tool, "--link"); err != nil {
			t.Fatal(err)
		}
	}
	conf, _ := os.ReadFile(filepath.Join(cnis[0].ConfDir, "10-"+cnis[0].Net+".conflist"))
	t.Logf("weavewg cni install wrote:\n%s", conf)

	// 1. 20 pods per host, all ADDed at once (10 in flight per host).
	const perHost = 20
	type pod struct {
		host   int
		name   string
		netns  string
		addr   string
		result cniResult
	}
	var mu sync.Mutex
	var pods []*pod
	var errs []error
	var wg sync.WaitGroup
	start := time.Now()
	for i := range hs {
		sem := make(chan struct{}, 10)
		for j := range perHost {
			p := &pod{host: i, name: fmt.Sprintf("h%dpod%d", i+1, j), netns: fmt.Sprintf("%sh%d-pod%d", b.Prefix, i+1, j)}
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				err := b.NewNetnsFast(p.netns)
				var out string
				if err == nil {
					out, _, err = cnis[p.host].Run("add", p.netns, p.name)
				}
				if err == nil {
					err = json.Unmarshal([]byte(out), &p.result)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				if len(p.result.IPs) == 1 {
					p.addr = strings.Split(p.result.IPs[0].Address, "/")[0]
				}
				pods = append(pods, p)
			})
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d ADDs failed, first: %v", len(errs), len(hs)*perHost, errs[0])
	}
	t.Logf("%d pods added on %d hosts concurrently in %.1fs", len(pods), len(hs), time.Since(start).Seconds())
	seen := map[string]string{}
	for _, p := range pods {
		if p.addr == "" || len(p.result.Interfaces) != 1 || p.result.Interfaces[0].Name != "eth0" || p.result.Interfaces[0].Mac == "" {
			t.Fatalf("%s: result %+v: want eth0 with a MAC and one address", p.name, p.result)
		}
		if other, dup := seen[p.addr]; dup {
			t.Fatalf("%s and %s both got %s", p.name, other, p.addr)
		}
		seen[p.addr] = p.name
	}
	if ns := pods[0].result.DNS.Nameservers; len(ns) != 1 || !slices.Contains(pods[0].result.DNS.Search, "weave.local") {
		t.Errorf("result DNS %+v: want the host's address and weave.local", pods[0].result.DNS)
	}
	for _, h := range hs {
		if n := len(cniAttachments(h)); n != perHost {
			t.Errorf("%s: weavewg ps lists %d CNI attachments, want %d", h, n, perHost)
		}
	}
	byHost := map[int][]*pod{}
	for _, p := range pods {
		byHost[p.host] = append(byHost[p.host], p)
	}

	// Cross-host ping: one pod per host pings every pod on the other hosts.
	for i := range hs {
		var addrs []string
		for _, p := range pods {
			if p.host != i {
				addrs = append(addrs, p.addr)
			}
		}
		from := byHost[i][0]
		lost, err := testbed.PingAll(from.netns, addrs, 20*time.Second)
		if err != nil || len(lost) > 0 {
			t.Errorf("%s (%s) cannot reach %d of %d pods on the other hosts: %v %v", from.name, from.addr, len(lost), len(addrs), lost, err)
		}
	}
	t.Logf("cross-host pings: each host's first pod reached the %d pods of the others", 2*perHost)

	// DNS names: a pod on h1 resolves pods of h2 and h3 through the
	// nameserver its result gave it.
	from := byHost[0][0]
	for _, target := range []*pod{byHost[1][3], byHost[2][7]} {
		out, err := h1Exec(hs[0], from.netns, "dig", "+short", "+time=2", "+tries=3", "@"+from.result.DNS.Nameservers[0], target.name+".weave.local")
		if err != nil || strings.TrimSpace(out) != target.addr {
			t.Errorf("%s resolving %s.weave.local: %q %v, want %s", from.name, target.name, out, err, target.addr)
		}
	}

	// CHECK: fine as added; fails once the interface is removed by hand
	// (the daemon may release the attachment as its veth goes, or keep it
	// until DEL: CHECK fails either way).
	allocBefore := hs[1].Status().IPAM.Allocated
	c := byHost[1][0]
	if _, _, err := cnis[1].Run("check", c.netns, c.name); err != nil {
		t.Errorf("CHECK of a healthy pod: %v", err)
	}
	if out, err := h1Exec(hs[1], c.netns, "ip", "link", "del", "eth0"); err != nil {
		t.Fatalf("removing eth0 by hand: %v %s", err, out)
	}
	if out, _, err := cnis[1].Run("check", c.netns, c.name); err == nil {
		t.Errorf("CHECK after eth0 was removed succeeded: %s", out)
	} else {
		t.Logf("CHECK after eth0 was removed: %v", err)
	}

	// The interface itself is checked: its address flushed by hand (the
	// veth stays, so the daemon keeps the attachment), CHECK fails.
	flushed := byHost[1][2]
	if out, err := h1Exec(hs[1], flushed.netns, "ip", "addr", "flush", "dev", "eth0"); err != nil {
		t.Fatalf("flushing eth0's address: %v %s", err, out)
	}
	if out, _, err := cnis[1].Run("check", flushed.netns, flushed.name); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("CHECK after eth0's address was flushed: %q %v; want a failure saying eth0 does not hold its address", out, err)
	}

	// DEL twice is success, of the broken pod and of a healthy one; both
	// addresses and names are gone.
	healthy := byHost[1][1]
	for _, p := range []*pod{c, healthy} {
		for k := range 2 {
			if _, _, err := cnis[1].Run("del", p.netns, p.name); err != nil {
				t.Errorf("DEL #%d of %s: %v", k+1, p.name, err)
			}
		}
		if out, err := hs[1].CLIErr("dns-lookup", p.name); err == nil {
			t.Errorf("%s still resolves after DEL: %s", p.name, out)
		}
	}
	if n := hs[1].Status().IPAM.Allocated; n != allocBefore-2 {
		t.Errorf("h2 allocated %d after the DELs, want %d", n, allocBefore-2)
	}
	if out, _ := hs[1].Exec("ip", "-o", "link", "show", "type", "veth"); strings.Count(out, "vethwe") != perHost-2 {
		t.Errorf("h2 has %d weavewg veths after the DELs, want %d", strings.Count(out, "vethwe"), perHost-2)
	}

	// GC with an empty valid list frees all: the runtime lost track of
	// h3's pods (its cache is gone), so GC is all that can free them.
	os.RemoveAll(cnis[2].Cache)
	os.MkdirAll(cnis[2].Cache, 0o700)
	if _, _, err := cnis[2].Run("gc", byHost[2][0].netns, ""); err != nil {
		t.Errorf("GC: %v", err)
	}
	if n := len(cniAttachments(hs[2])); n != 0 {
		t.Errorf("h3 has %d CNI attachments after GC with no valid attachment, want 0", n)
	}
	if n := podAllocs(hs[2]); n != 0 {
		t.Errorf("h3 holds %d addresses besides its host address after GC, want 0", n)
	}
	if out, _ := hs[2].Exec("ip", "-o", "link", "show", "type", "veth"); strings.Contains(out, "vethwe") {
		t.Errorf("h3 keeps veths after GC: %s", out)
	}
	// STATUS: the daemon can attach.
	if _, _, err := cnis[0].Run("status", byHost[0][0].netns, ""); err != nil {
		t.Errorf("STATUS with the daemon up: %v", err)
	}

	// The spec's error cases: a CNI error object, exit status non-zero,
	// nothing allocated.
	h0 := hs[0]
	before := h0.Status().IPAM.Allocated
	errNS := b.Prefix + "h1-errors"
	if err := b.NewNetnsFast(errNS); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		env   []string
		stdin string
		code  int
	}{
		{"unknown CNI_COMMAND", pluginEnv("FROB", errNS, "x", cnis[0]), pluginConf(cnis[0], "1.1.0"), 4},
		{"bad JSON", pluginEnv("ADD", errNS, "x", cnis[0]), `{"cniVersion": "1.1.0", "name": `, 6},
		{"missing CNI_NETNS", slices.DeleteFunc(pluginEnv("ADD", errNS, "x", cnis[0]), func(s string) bool { return strings.HasPrefix(s, "CNI_NETNS=") }), pluginConf(cnis[0], "1.1.0"), 4},
		{"unsupported cniVersion", pluginEnv("ADD", errNS, "x", cnis[0]), pluginConf(cnis[0], "9.9.9"), 1},
	} {
		out, err := cnis[0].Plugin(tc.env, tc.stdin)
		var ce cniError
		if err == nil || json.Unmarshal([]byte(out), &ce) != nil || ce.Code != tc.code || ce.Msg == "" {
			t.Errorf("%s: exit %v, printed %q; want a CNI error object with code %d", tc.name, err, out, tc.code)
		} else {
			t.Logf("%s: code %d: %s", tc.name, ce.Code, ce.Msg)
		}
	}
	if n := h0.Status().IPAM.Allocated; n != before || len(cniAttachments(h0)) != perHost {
		t.Errorf("the refused calls changed h1: %d allocated (was %d), %d CNI attachments", n, before, len(cniAttachments(h0)))
	}
	// VERSION answers the versions the plugin speaks.
	if out, err := cnis[0].Plugin([]string{"CNI_COMMAND=VERSION"}, `{"cniVersion":"1.1.0"}`); err != nil || !strings.Contains(out, `"1.1.0"`) || !strings.Contains(out, `"1.0.0"`) {
		t.Errorf("VERSION: %q %v", out, err)
	}

	// 3. kill -9 between ADD and DEL.
	h := hs[0]
	victim := byHost[0][1]
	h.Kill()
	if _, _, err := cnis[0].Run("status", victim.netns, ""); err == nil {
		t.Errorf("STATUS with the daemon down succeeded")
	}
	late := b.Prefix + "h1-late"
	if err := b.NewNetnsFast(late); err != nil {
		t.Fatal(err)
	}
	out, _, err := cnis[0].Run("add", late, "late")
	t.Logf("ADD with the daemon down: %v", err)
	if err == nil || !strings.Contains(out+err.Error(), "not running") {
		t.Errorf("ADD with the daemon down: %q %v; want a failure saying the daemon is not running", out, err)
	}
	// The plugin itself, as any runtime reads it: an error object, code
	// 11 (try again later), exit status non-zero.
	raw, err := cnis[0].Plugin(pluginEnv("ADD", late, "late", cnis[0]), pluginConf(cnis[0], "1.1.0"))
	var ce cniError
	if err == nil || json.Unmarshal([]byte(raw), &ce) != nil || ce.Code != 11 || !strings.Contains(ce.Msg, "not running") {
		t.Errorf("the plugin's ADD with the daemon down: %q (%v); want a CNI error object with code 11 saying the daemon is not running", raw, err)
	}
	if _, _, err := cnis[0].Run("del", victim.netns, victim.name); err == nil {
		t.Errorf("DEL with the daemon down succeeded: the address would leak")
	}
	h.Launch()
	if _, _, err := cnis[0].Run("del", victim.netns, victim.name); err != nil {
		t.Errorf("DEL once the daemon is back: %v", err)
	}
	for _, a := range cniAttachments(h) {
		if a.ContainerID != "" && (strings.Contains(a.Netns, "late") || a.IP == victim.addr+"/12" || strings.HasPrefix(a.IP, victim.addr+"/")) {
			t.Errorf("after the restart and DEL, ps still lists %+v", a)
		}
	}
	if n, want := podAllocs(h), perHost-1; n != want {
		t.Errorf("h1 allocates %d addresses besides its host address after DEL of one of %d pods, want %d (the failed ADD and the deleted pod freed)", n, perHost, want)
	}
	if n := len(cniAttachments(h)); n != perHost-1 {
		t.Errorf("h1 lists %d CNI attachments, want %d", n, perHost-1)
	}
}

// pluginEnv is the environment a runtime gives the plugin for cmd on ns.
func pluginEnv(cmd, ns, id string, c *testbed.CNI) []string {
	return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + testbed.NetnsPath(ns),
		"CNI_IFNAME=eth0", "CNI_PATH=" + c.BinDir}
}

// pluginConf is the plugin's configuration as a runtime passes it on stdin.
func pluginConf(c *testbed.CNI, version string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"weavewg","api_socket":%q}`, version, c.Net, c.Host.Socket)
}

// h1Exec runs a command inside namespace ns (made by the test).
func h1Exec(h *testbed.Host, ns string, name string, args ...string) (string, error) {
	return h.Exec("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
