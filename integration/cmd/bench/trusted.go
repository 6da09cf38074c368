package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// The trusted fast path (issue 16) and its baseline, on two hosts of their
// own (a network of their own, so h1 and h2 stay as they are):
//
//	(v) raw kernel VXLAN: a plain vxlan device in each host namespace, VNI
//	    42, UDP 4789, no learning, remote the other host, at the MTU of
//	    weavewg's VXLAN device (main.go sets it), 198.51.100.N/24 (outside the overlay range, which
//	    weavewg refuses to share with a local interface): host → host
//	(t) weavewg with --trusted-subnets covering both underlay addresses:
//	    container → container, which crosses weavewg's VXLAN device
//
// t/v is held to ≥ 0.9: what the fast path costs over the kernel's own
// VXLAN (the containers' veth and bridge hops included, as c against b).

// trustedHosts are the hosts of t and v.
type trustedHosts struct {
	a, b *testbed.Host
}

// addTrustedHosts makes the two hosts (not launched), running bin ("": the
// bed's binary).
func addTrustedHosts(bed *testbed.Bed, bin string) trustedHosts {
	n := len(bed.Hosts())
	ua := fmt.Sprintf("%s%d", testbed.UnderlayNet, n+1)
	ub := fmt.Sprintf("%s%d", testbed.UnderlayNet, n+2)
	args := []string{"--trusted-subnets", ua + "/32," + ub + "/32"}
	pw := fmt.Sprintf("bench-trusted-%s%d", bed.Prefix, n)
	a := bed.AddHost(testbed.HostOptions{NoLaunch: true, NoPeers: true, Password: pw, Args: args, Binary: bin})
	b := bed.AddHost(testbed.HostOptions{NoLaunch: true, Peers: []string{a.UnderlayIP}, Password: pw, Args: args, Binary: bin})
	return trustedHosts{a, b}
}

// rawVXLANAddr is host i's (0 or 1) address on the raw VXLAN device.
func rawVXLANAddr(i int) string { return fmt.Sprintf("198.51.100.%d", i+1) }

// startRawVXLAN makes the baseline devices and checks they carry a ping.
func startRawVXLAN(bed *testbed.Bed, th trustedHosts) error {
	hs := []*testbed.Host{th.a, th.b}
	for i, h := range hs {
		other := hs[1-i]
		bed.MustIP(h.Netns, "link", "add", "rvx0", "type", "vxlan", "id", "42", "dstport", "4789",
			"local", h.UnderlayIP, "remote", other.UnderlayIP, "nolearning")
		bed.MustIP(h.Netns, "link", "set", "rvx0", "mtu", fmt.Sprint(refMTU), "up")
		bed.MustIP(h.Netns, "addr", "add", rawVXLANAddr(i)+"/24", "dev", "rvx0")
	}
	return testbed.Poll(bed.TB(), 10*time.Second, "ping over raw VXLAN", func() error {
		return pingOnce(th.a.Netns, rawVXLANAddr(1))
	})
}

// startTrusted launches weavewg on both hosts, attaches a container to each
// and waits until their path is VXLAN.
func startTrusted(bed *testbed.Bed, th trustedHosts) (*testbed.Container, *testbed.Container, error) {
	var c1, c2 *testbed.Container
	err := try(func() {
		th.a.Launch()
		th.b.Launch()
		bed.WaitMesh(60*time.Second, th.a, th.b)
		c1, c2 = th.a.AddContainer(), th.b.AddContainer()
		if err := c1.PingEventually(c2.Addr, 30*time.Second); err != nil {
			bed.TB().Fatalf("%v", err)
		}
		for _, w := range [][2]*testbed.Host{{th.a, th.b}, {th.b, th.a}} {
			if _, err := w[0].WaitDatapath(w[1].Name, "vxlan (trusted)", 30*time.Second); err != nil {
				bed.TB().Fatalf("%v", err)
			}
		}
	})
	if err != nil && !strings.Contains(err.Error(), "trusted") {
		err = fmt.Errorf("trusted fast path: %w", err)
	}
	return c1, c2, err
}
