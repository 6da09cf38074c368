package integration

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestDockerSubnets is issue 15's isolated subnets through Docker, against
// real dockerds (one per host, run as packaged: iptables on, FORWARD
// DROP): `docker network create -d weavewg --ipam-driver weavewg --subnet
// 10.33.1.0/24 a` and `--subnet 10.33.2.0/24 b` on two hosts whose
// default subnet is 10.32.0.0/16. Containers on a reach each other across
// hosts by address and by name; none reaches a container of another
// subnet (b, weavewg's default network, Docker's own bridge network), in
// either direction, even with a route to the whole range added by hand.
// A subnet outside the range, inside the default subnet, or overlapping
// another network's makes `docker network create` fail with a reason; a
// dockerd restart keeps the subnets' networks working.
func TestDockerSubnets(t *testing.T) {
	if err := testbed.DockerCheck(); err != nil {
		t.Skip(err)
	}
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	tarPath, err := b.BusyboxTar(dockerPage + "\n")
	if err != nil {
		t.Skip(err)
	}
	args := []string{"--ipalloc-range", "10.32.0.0/12", "--ipalloc-default-subnet", "10.32.0.0/16"}
	h1 := b.AddHost(testbed.HostOptions{NoLaunch: true, Args: args})
	h2 := b.AddHost(testbed.HostOptions{NoLaunch: true, Args: args})
	d1, err := h1.StartDockerErr()
	if err != nil {
		t.Skipf("dockerd cannot run here: %v", err)
	}
	d2 := h2.StartDocker()
	h1.Launch()
	h2.Launch()
	b.WaitMesh(30*time.Second, h1, h2)
	ds := map[*testbed.Host]*testbed.Docker{h1: d1, h2: d2}
	subnets := map[string]string{"a": "10.33.1.0/24", "b": "10.33.2.0/24"}
	for _, h := range []*testbed.Host{h1, h2} {
		d := ds[h]
		if err := d.Import(tarPath, dockerImage); err != nil {
			t.Fatal(err)
		}
		testbed.Eventually(t, 30*time.Second, "the weavewg Docker network on "+h.Name, func() error {
			_, err := d.Run("network", "inspect", "weavewg")
			return err
		})
		for _, n := range []string{"a", "b"} {
			d.MustRun("network", "create", "-d", "weavewg", "--ipam-driver", "weavewg", "--subnet", subnets[n], n)
		}
	}

	// Subnets that are not usable: a clear error, and no network.
	for _, c := range []struct{ subnet, want string }{
		{"10.99.1.0/24", "not inside the overlay range"}, // not in the range
		{"10.32.5.0/24", "default subnet"},               // inside the default subnet
		{"10.33.1.0/25", "overlaps"},                     // inside a
		{"10.33.0.0/16", "overlaps"},                     // holds a and b
		{"10.33.1.0/24", "overlaps"},                     // a's own
		{"10.33.3.1/24", "host bits"},                    // not a network address
	} {
		out, err := d1.Run("network", "create", "-d", "weavewg", "--ipam-driver", "weavewg", "--subnet", c.subnet, "bad")
		if err == nil {
			t.Errorf("docker network create --subnet %s succeeded: %s", c.subnet, out)
			d1.Run("network", "rm", "bad")
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("docker network create --subnet %s: %q, want a reason saying %q", c.subnet, out, c.want)
		}
		t.Logf("--subnet %s: %s", c.subnet, out)
	}
	if out, err := d1.Run("network", "inspect", "bad"); err == nil {
		t.Errorf("a refused network exists: %s", out)
	}

	// a, b and weavewg's default network on each host; Docker's bridge on h1.

	type ctr struct {
		name, net, ip string
		h             *testbed.Host
	}
	var cs []*ctr
	for _, h := range []*testbed.Host{h1, h2} {
		dnsArgs := strings.Fields(h.CLI("dns-args"))
		for _, n := range []string{"a", "b", "weavewg"} {
			c := &ctr{name: fmt.Sprintf("%s%d", n, h.Index), net: n, h: h}
			ds[h].MustRun(append(append([]string{"run", "-d", "--init", "--restart", "always", "--name", c.name, "--net", n}, dnsArgs...), dockerImage, "sleep", "3600")...)
			c.ip = containerIP(t, ds[h], c.name, n)
			want := subnets[n]
			if want == "" {
				want = "10.32.0.0/16"
			}
			plen := ds[h].MustRun("inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPPrefixLen}}`, n), c.name)
			if p := netip.MustParsePrefix(c.ip + "/" + plen); p.Masked() != netip.MustParsePrefix(want) {
				t.Fatalf("%s on %s got %s/%s, want an address of %s with its prefix length", c.name, n, c.ip, plen, want)
			}
			cs = append(cs, c)
		}
	}

	d1.MustRun("run", "-d", "--init", "--name", "plain1", dockerImage, "sleep", "3600")
	plain := &ctr{name: "plain1", net: "bridge", h: h1, ip: containerIP(t, d1, "plain1", "bridge")}
	var names []string
	for _, c := range cs {
		names = append(names, c.name+" "+c.ip)
	}
	t.Logf("containers: %s; %s on Docker's bridge %s", strings.Join(names, ", "), plain.name, plain.ip)
	ping := func(x *ctr, to string) error {
		_, err := ds[x.h].Run("exec", x.name, "ping", "-c", "1", "-W", "1", to)
		return err
	}
	samePairs := func(phase string) {
		t.Helper()
		for _, x := range cs {
			for _, y := range cs {
				if x == y || x.net != y.net || x.h == y.h {
					continue
				}
				testbed.Eventually(t, 30*time.Second, fmt.Sprintf("%s: %s pings %s (%s) across hosts", phase, x.name, y.name, y.ip), func() error { return ping(x, y.ip) })
				testbed.Eventually(t, 20*time.Second, fmt.Sprintf("%s: %s pings %s by name", phase, x.name, y.name), func() error { return ping(x, y.name+".weave.local") })
			}
		}
	}
	samePairs("subnets")

	// Every container routes the whole range through ethwe0 by hand.
	for _, c := range cs {
		routeByHand(t, ds[c.h], c.name)
	}
	crossed := 0
	for _, x := range append(cs, plain) {
		for _, y := range append(cs, plain) {
			if x.net == y.net {
				continue
			}
			crossed++
			if err := ping(x, y.ip); err == nil {
				t.Errorf("%s (%s, %s on %s) reached %s (%s, %s on %s)", x.name, x.ip, x.net, x.h, y.name, y.ip, y.net, y.h)
			}
		}
	}
	t.Logf("%d pings between different networks, none answered unless listed above", crossed)
	if t.Failed() {
		out, _ := h1.Exec("nft", "list", "ruleset")
		t.Logf("h1's ruleset:\n%s", out)
	}
	samePairs("subnets with routes by hand")

	// A dockerd restart (it asks for its networks' pools again): a1 comes
	// back on a and still reaches a2, and not b2.
	d1.Stop()
	d1.Start()
	testbed.Eventually(t, 120*time.Second, "a1 running again", func() error {
		out, err := d1.Run("inspect", "-f", "{{.State.Running}}", "a1")
		if err != nil {
			return err
		}
		if out != "true" {
			return errorf("a1 running: %s", out)
		}
		return nil
	})
	a1, a2, b2 := cs[0], cs[3], cs[4]
	a1.ip = containerIP(t, d1, "a1", "a")
	testbed.Eventually(t, 30*time.Second, "a1 pings a2 after dockerd restarted on h1", func() error { return ping(a1, a2.ip) })
	testbed.Eventually(t, 30*time.Second, "a2 pings a1 after dockerd restarted on h1", func() error { return ping(a2, a1.ip) })
	routeByHand(t, d1, "a1")
	if ping(a1, b2.ip) == nil {
		t.Errorf("after dockerd restarted on h1, a1 reached b2 (%s)", b2.ip)
	}
	// A static address in a subnet (docker run --ip) is handed out and
	// reached across hosts
	// (An address is handed out by the host that owns it in the ring, as
	// for attach --ip: h1 made the subnet's first allocation.)
	d1.MustRun("run", "-d", "--init", "--name", "a1static", "--net", "a", "--ip", "10.33.1.77", dockerImage, "sleep", "3600")
	testbed.Eventually(t, 30*time.Second, "a2 pings a1static (10.33.1.77)", func() error { return ping(a2, "10.33.1.77") })
	// Networks can be removed and made again with the same subnet.
	d2.MustRun("rm", "-f", "b2")
	d2.MustRun("network", "rm", "b")
	d2.MustRun("network", "create", "-d", "weavewg", "--ipam-driver", "weavewg", "--subnet", subnets["b"], "b")
}

// routeByHand routes the whole range through the container's ethwe0, from
// its host (docker exec --privileged cannot set capabilities in this bed).
func routeByHand(t *testing.T, d *testbed.Docker, name string) {
	t.Helper()
	pid := d.MustRun("inspect", "-f", "{{.State.Pid}}", name)
	if out, err := exec.Command("nsenter", "--net=/proc/"+pid+"/ns/net", "ip", "route", "replace", "10.32.0.0/12", "dev", "ethwe0").CombinedOutput(); err != nil {
		t.Fatalf("%s: route by hand: %v %s", name, err, out)
	}
}
