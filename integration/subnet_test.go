package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestIsolatedSubnets is issue 15 acceptance 3: with --ipalloc-range
// 10.32.0.0/12 and a default subnet 10.32.0.0/16, containers attached with
// --net 10.33.1.0/24 reach each other across hosts, and not those of
// 10.33.2.0/24 or of the default subnet, in either direction, on the same
// host or another, even with a route to the whole range added by hand
// inside every container. Names still resolve from every subnet.
func TestIsolatedSubnets(t *testing.T) {
	needTool(t, "ping")
	args := []string{"--ipalloc-range", "10.32.0.0/12", "--ipalloc-default-subnet", "10.32.0.0/16"}
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	h1 := b.AddHost(testbed.HostOptions{Args: args})
	h2 := b.AddHost(testbed.HostOptions{Args: args})
	b.WaitMesh(30*time.Second, h1, h2)
	subnets := map[string]string{"a": "10.33.1.0/24", "b": "10.33.2.0/24", "d": ""}
	var cs []*testbed.Container
	subnetOf := map[*testbed.Container]string{}
	for _, h := range []*testbed.Host{h1, h2} {
		for _, s := range []string{"a", "b", "d"} {
			c, err := h.AddContainerOpts(fmt.Sprintf("%s%d", s, h.Index), subnets[s], false)
			if err != nil {
				t.Fatal(err)
			}
			want := subnets[s]
			if want == "" {
				want = "10.32.0.0/16"
			}
			if p := netip.MustParsePrefix(c.IP); p.Masked() != netip.MustParsePrefix(want) {
				t.Fatalf("%s got %s, want an address of %s with its prefix length", c, c.IP, want)
			}
			cs = append(cs, c)
			subnetOf[c] = s
		}
	}
	t.Logf("containers: %v", func() []string {
		var l []string
		for _, c := range cs {
			l = append(l, c.Name+" "+c.IP)
		}
		return l
	}())
	// The same subnet spans hosts, both ways.
	for _, x := range cs {
		for _, y := range cs {
			if x != y && subnetOf[x] == subnetOf[y] {
				if err := x.PingEventually(y.Addr, 20*time.Second); err != nil {
					t.Errorf("same subnet: %v", err)
				}
			}
		}
	}
	// Every container routes the whole range through its interface by
	// hand: proxy ARP and the containers' own ARP would carry the packets
	// if nothing dropped them.
	for _, c := range cs {
		if out, err := c.Exec("ip", "route", "replace", "10.32.0.0/12", "dev", "ethwe0"); err != nil {
			t.Fatalf("%s: route by hand: %v %s", c, err, out)
		}
	}
	crossed := 0
	for _, x := range cs {
		for _, y := range cs {
			if subnetOf[x] == subnetOf[y] {
				continue
			}
			crossed++
			if err := x.Ping(y.Addr); err == nil {
				where := "across hosts"
				if x.Host == y.Host {
					where = "on one host"
				}
				t.Errorf("%s (%s) reached %s (%s) %s", x, x.IP, y, y.IP, where)
			}
		}
	}
	t.Logf("%d pings between different subnets, none answered unless listed above", crossed)
	if t.Failed() {
		out, _ := h1.Exec("nft", "list", "ruleset")
		t.Logf("h1's ruleset:\n%s", out)
	}
	// Same subnet still works with the routes by hand.
	for _, x := range cs {
		for _, y := range cs {
			if x != y && subnetOf[x] == subnetOf[y] && x.Host != y.Host {
				if err := x.PingEventually(y.Addr, 10*time.Second); err != nil {
					t.Errorf("same subnet with routes by hand: %v", err)
				}
			}
		}
	}
	// Every subnet's containers resolve names at their host's DNS.
	for _, c := range cs {
		server := strings.Split(c.Host.HostIP, "/")[0] + ":53"
		addrs, r, err := lookupA(c, server, "d2.weave.local")
		if err != nil || r.Rcode != mdns.RcodeSuccess || len(addrs) != 1 {
			t.Errorf("%s asked %s for d2.weave.local: %v %v %v", c, server, addrs, r, err)
		}
	}
}

// TestJoinDefaultSubnet: a host that joins with a token takes the
// network's --ipalloc-default-subnet (issue 15): its containers get
// addresses there, its isolated subnets work with the founder's, and a
// restart keeps it. A joiner given another default subnet is refused with
// the network's named.
func TestJoinDefaultSubnet(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	def := "10.32.0.0/16"
	h1 := b.AddHost(testbed.HostOptions{NoPassword: true, NoPeers: true,
		Args: []string{"--ipalloc-range", "10.32.0.0/12", "--ipalloc-default-subnet", def}})
	h2 := b.AddHost(testbed.HostOptions{Token: createToken(t, h1).Token, Args: []string{"--ipalloc-range", "10.32.0.0/12"}})
	b.WaitMesh(30*time.Second, h1, h2)
	check := func(when string) {
		t.Helper()
		if got := h2.Status().DefaultSubnet; got != def {
			t.Errorf("%s: the joiner's default subnet is %q, want the network's %s", when, got, def)
		}
	}
	check("after the join")
	d2, err := h2.AddContainerOpts("d2", "", false)
	if err != nil {
		t.Fatal(err)
	}
	if p := netip.MustParsePrefix(d2.IP); p.Masked() != netip.MustParsePrefix(def) {
		t.Errorf("the joiner's container got %s, want an address of %s with its prefix length", d2.IP, def)
	}
	a1, err := h1.AddContainerOpts("a1", "10.33.1.0/24", false)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := h2.AddContainerOpts("a2", "10.33.1.0/24", false)
	if err != nil {
		t.Fatalf("the joiner refuses an isolated subnet: %v", err)
	}
	if err := a2.PingEventually(a1.Addr, 20*time.Second); err != nil {
		t.Errorf("isolated subnet across the founder and the joiner: %v", err)
	}
	if err := a2.Ping(d2.Addr); err == nil {
		t.Errorf("a2 (10.33.1.0/24) reached d2 (default subnet) on the joiner")
	}
	h2.Restart()
	b.WaitMesh(30*time.Second, h1, h2)
	check("after a restart")

	// Another default subnet than the network's: refused, saying which.
	// Bounded: a daemon that accepted it would run until killed.
	joiner := b.AddHost(testbed.HostOptions{NoLaunch: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", joiner.Netns, b.BinaryPath(), "join",
		"--state-dir", filepath.Join(t.TempDir(), "state"), "--api-socket", filepath.Join(t.TempDir(), "api.sock"),
		"--name", "joiner", "--join-timeout", "4s", "--iface", "wwgj0", "--bridge", "wwgjbr",
		"--ipalloc-default-subnet", "10.34.0.0/16", createToken(t, h1).Token)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	t.Logf("weavewg join --ipalloc-default-subnet 10.34.0.0/16 → %v:\n%s", err, out)
	if ctx.Err() != nil {
		t.Errorf("a joiner with another default subnet was not refused: it ran until killed")
	} else if err == nil || !strings.Contains(out, "default subnet is "+def) {
		t.Errorf("a joiner with another default subnet: want a refusal naming the network's %s", def)
	}
}
