package integration

import (
	"fmt"
	"net/netip"
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
