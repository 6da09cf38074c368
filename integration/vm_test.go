package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// vmModules are the guest kernel's modules the scenario needs (their
// dependencies come along): kernel WireGuard, the underlay's bridge and
// veths, wireguard-go's TUN, and nftables with the ct expression that
// holds notrack (the port-sharing table, vxlan and hostnet filters).
// crc32c_generic is libcrc32c's soft dependency ("crc32c", an alias that
// insmod cannot resolve), which nf_tables needs. Nothing else: the guest
// has no modprobe, so a family the daemon opened without needing it (as
// vishvananda's netlink handles do by default: XFRM needs xfrm_user) fails
// the run, as on a host without that module.
var vmModules = []string{"wireguard", "veth", "bridge", "tun", "crc32c_generic", "nf_tables", "nft_ct"}

// vmOutput is what the guest printed: RESULT lines and named blocks.
type vmOutput struct {
	results map[string]string // name → "OK ..." or "FAIL ..."
	blocks  map[string]string
}

func parseVMOutput(s string) vmOutput {
	o := vmOutput{results: map[string]string{}, blocks: map[string]string{}}
	var cur string
	var b strings.Builder
	for _, l := range strings.Split(strings.ReplaceAll(s, "\r", ""), "\n") {
		switch {
		case strings.HasPrefix(l, "=== BEGIN "):
			cur = strings.TrimPrefix(l, "=== BEGIN ")
			b.Reset()
		case cur != "" && l == "=== END "+cur:
			o.blocks[cur] = b.String()
			cur = ""
		case cur != "":
			b.WriteString(l + "\n")
		case strings.HasPrefix(l, "RESULT "):
			name, v, _ := strings.Cut(strings.TrimPrefix(l, "RESULT "), ": ")
			o.results[name] = v
		}
	}
	return o
}

// TestKernelWireGuardVM is issue 16's acceptance 1, in a qemu guest that
// boots Debian's kernel (this machine's has no WireGuard): three namespace
// hosts, h1 on --datapath auto (so kernel), h2 forced to userspace, h3 on
// --datapath kernel, h2 and h3 cut off from each other on the underlay.
// Every pair pings and moves 1 MB intact both ways (kernel↔userspace,
// kernel↔kernel, and userspace↔kernel relayed through the kernel host
// h1); every host's path MTU probes, which cross the port split, are
// answered and no host counts a bad UDP checksum; `wg show` lists on each
// kernel device exactly the peers weavewg put there, with handshakes and
// bytes; status says the datapath of the host and of each peer; h2 has no
// kernel device; stopping removes the devices.
func TestKernelWireGuardVM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the test bed builds the weavewg binary as root)")
	}
	needTool(t, "qemu-system-x86_64", "busybox", "wg", "ip", "ldd")
	k, err := testbed.FindVMKernel()
	if err != nil {
		t.Skip(err)
	}
	if buildErr != nil {
		t.Fatalf("weavewg binary: %v", buildErr)
	}
	bin := testbed.Binary()
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := buildVMInitramfs(k, bin, initrd); err != nil {
		t.Fatalf("initramfs: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute) // 1–2 on a quiet machine, 16 seen under load
	defer cancel()
	start := time.Now()
	out, err := testbed.RunVM(ctx, k.Vmlinuz, initrd, "", 1024, func(l string) {
		if strings.HasPrefix(l, "RESULT ") || strings.Contains(l, "VMTEST ") {
			t.Logf("guest %5.1fs: %s", time.Since(start).Seconds(), l)
		}
	})
	if err != nil {
		t.Fatalf("qemu: %v; console:\n%s", err, tail(out, 80))
	}
	if !strings.Contains(out, "VMTEST DONE") {
		t.Fatalf("the guest did not finish; console:\n%s", tail(out, 60))
	}
	o := parseVMOutput(out)
	t.Logf("guest ran %.1fs (kernel %s)", time.Since(start).Seconds(), k.Version)
	for name, v := range o.results {
		if !strings.HasPrefix(v, "OK") {
			t.Errorf("%s: %s", name, v)
		}
	}
	defer func() {
		if t.Failed() { // the daemons' logs say why (path and MTU decisions)
			for i := 1; i <= 3; i++ {
				t.Logf("h%d log:\n%s", i, tail(o.blocks["log-h"+string(rune('0'+i))], 80))
			}
		}
	}()
	if t.Failed() {
		t.FailNow()
	}

	// Transfers: every pair, both ways, byte-identical.
	for _, pair := range []string{"1-2", "2-1", "1-3", "3-1", "2-3", "3-2"} {
		from, to, _ := strings.Cut(pair, "-")
		want := strings.Fields(o.blocks["sum-h"+to])
		got := strings.Fields(o.blocks["fetch-h"+from+"-h"+to]) // sha256, "-", bytes
		if len(want) == 0 || len(got) < 3 || got[0] != want[0] {
			t.Errorf("h%s fetched h%s's 1 MB as %v (sha256, -, bytes); want sha256 %s", from, to, got, want)
		}
	}

	var st [4]api.Status
	for i := 1; i <= 3; i++ {
		if err := json.Unmarshal([]byte(o.blocks["status-h"+string(rune('0'+i))]), &st[i]); err != nil {
			t.Fatalf("status of h%d: %v\n%s", i, err, o.blocks["status-h"+string(rune('0'+i))])
		}
	}
	// The host's datapath.
	for i, want := range map[int]string{1: "kernel wireguard (device kwweavewg0", 2: "userspace wireguard (wireguard-go; --datapath userspace)", 3: "kernel wireguard (device kwweavewg0"} {
		if !strings.HasPrefix(st[i].Datapath, want) {
			t.Errorf("h%d status datapath %q; want %q…", i, st[i].Datapath, want)
		}
	}
	// Each peer's.
	peerPath := func(i int, nick string) api.Connection {
		for _, c := range st[i].Conns {
			if c.Nickname == nick && c.Datapath != "" {
				return c
			}
		}
		for _, c := range st[i].Conns {
			if c.Nickname == nick {
				return c
			}
		}
		return api.Connection{}
	}
	for _, c := range []struct {
		host     int
		peer     string
		datapath string
		via      string
	}{
		{1, "h2", "kernel wireguard", ""}, {1, "h3", "kernel wireguard", ""},
		{3, "h1", "kernel wireguard", ""}, {2, "h1", "userspace wireguard", ""},
		{2, "h3", "", "h1"}, {3, "h2", "", "h1"},
	} {
		got := peerPath(c.host, c.peer)
		if c.via != "" {
			if got.Via != c.via {
				t.Errorf("h%d → %s: %+v; want relayed via %s", c.host, c.peer, got, c.via)
			}
			continue
		}
		if got.Datapath != c.datapath || got.LastHandshake == nil {
			t.Errorf("h%d → %s: datapath %q, handshake %v; want %q with a handshake", c.host, c.peer, got.Datapath, got.LastHandshake, c.datapath)
		}
	}
	// Path MTU probes leave through a raw socket without a UDP checksum
	// and cross the port-sharing table's rewrites (out of a kernel host's
	// 6785, into its 6783): every host got answers to its probes, and none
	// counted a bad UDP checksum (the rewrites once turned the zero into a
	// wrong one).
	for i := 1; i <= 3; i++ {
		if n := st[i].Counters["udp_mtu_probe_replies"]; n == 0 {
			t.Errorf("h%d: no path MTU probe answered (udp_mtu_probe_replies 0)", i)
		}
		if n, ok := snmpCounter(o.blocks["snmp-h"+string(rune('0'+i))], "Udp", "InCsumErrors"); !ok || n != 0 {
			t.Errorf("h%d: Udp InCsumErrors %d (read: %v); want 0", i, n, ok)
		}
	}
	if !strings.Contains(o.blocks["connections-h1"], "kernel wireguard") || !strings.Contains(o.blocks["connections-h3"], "relayed via h1") {
		t.Errorf("status connections:\nh1:\n%s\nh3:\n%s", o.blocks["connections-h1"], o.blocks["connections-h3"])
	}

	// wg show on the kernel devices: the peers weavewg configured, with
	// handshakes and bytes both ways (the kernel carried the traffic).
	keyOf := map[string]string{}
	for i := 1; i <= 3; i++ {
		keyOf["h"+string(rune('0'+i))] = st[i].PublicKey
	}
	for _, c := range []struct {
		host  string
		peers []string
	}{{"h1", []string{"h2", "h3"}}, {"h3", []string{"h1"}}} {
		dump := o.blocks["wgdump-"+c.host]
		pub, peers := parseWGDump(t, dump)
		if pub != keyOf[c.host] {
			t.Errorf("%s's kernel device has public key %s; weavewg's is %s", c.host, pub, keyOf[c.host])
		}
		if len(peers) != len(c.peers) {
			t.Errorf("%s's kernel device has %d peers; want %v:\n%s", c.host, len(peers), c.peers, dump)
		}
		for _, p := range c.peers {
			wp, ok := peers[keyOf[p]]
			if !ok || wp.handshake == 0 || wp.endpoint != "192.0.2."+p[1:]+":6783" {
				t.Errorf("%s's kernel device: peer %s %+v; want a handshake, endpoint 192.0.2.%s:6783", c.host, p, wp, p[1:])
			}
		}
		for _, l := range strings.Split(strings.TrimSpace(dump), "\n")[1:] {
			f := strings.Split(l, "\t")
			if len(f) == 8 && (f[5] == "0" || f[6] == "0") {
				t.Errorf("%s's kernel device moved no bytes for a peer: %s", c.host, l)
			}
		}
	}
	// h3's kernel device does not carry h2 (relayed), and its route to h2
	// goes into the TUN; h1's routes to both go into the kernel device.
	if r := o.blocks["routes-h1"]; !strings.Contains(r, "10.32.0.2 dev kwweavewg0") || !strings.Contains(r, "10.32.0.3 dev kwweavewg0") {
		t.Errorf("h1 routes:\n%s", r)
	}
	if r := o.blocks["routes-h3"]; !strings.Contains(r, "10.32.0.2 dev weavewg0") {
		t.Errorf("h3 routes (h2 is relayed: into the TUN):\n%s", r)
	}
	if strings.Contains(o.blocks["kwdev-h2"], "wireguard") {
		t.Errorf("h2 (--datapath userspace) has a kernel device:\n%s", o.blocks["kwdev-h2"])
	}
	for _, h := range []string{"h1", "h3"} {
		if !strings.Contains(o.blocks["kwdev-"+h], "wireguard") {
			t.Errorf("%s has no kernel wireguard device:\n%s", h, o.blocks["kwdev-"+h])
		}
		if strings.Contains(o.blocks["after-"+h], "kwweavewg0") {
			t.Errorf("%s's kernel device is left after the daemon stopped:\n%s", h, o.blocks["after-"+h])
		}
	}
}

// buildVMInitramfs writes the guest's initramfs: busybox, ip, wg, the
// weavewg binary, the modules and the scripts.
func buildVMInitramfs(k testbed.VMKernel, bin, path string) error {
	mods, err := k.ModuleOrder(vmModules...)
	if err != nil {
		return err
	}
	a, err := testbed.NewInitramfs(path)
	if err != nil {
		return err
	}
	bb, _ := exec.LookPath("busybox")
	ip, _ := exec.LookPath("ip")
	wg, _ := exec.LookPath("wg")
	a.Copy("/bin/busybox", bb)
	a.CopyDynamic("/usr/sbin/ip", ip)
	a.CopyDynamic("/usr/bin/wg", wg)
	a.Copy("/usr/bin/weavewg", bin)
	for name, src := range map[string]string{"/init": "testdata/vm/init", "/vmtest.sh": "testdata/vm/vmtest.sh"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		a.File(name, 0o755, b)
	}
	var order []string
	for _, m := range mods {
		a.Copy("/modules/"+filepath.Base(m), m)
		order = append(order, filepath.Base(m))
	}
	a.File("/modules/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp"} {
		a.Dir(d)
	}
	return a.Close()
}

// snmpCounter reads counter name of protocol proto from /proc/net/snmp's
// text (a header line of names, then a line of values, both "Proto: ...").
func snmpCounter(snmp, proto, name string) (uint64, bool) {
	var names []string
	for _, l := range strings.Split(snmp, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != proto+":" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == name && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				return v, err == nil
			}
		}
		return 0, false
	}
	return 0, false
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
