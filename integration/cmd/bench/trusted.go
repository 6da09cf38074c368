package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// The trusted fast path (issue 16) and its baselines:
//
//	(v) raw kernel VXLAN: a plain vxlan device in each host namespace, VNI
//	    42, UDP 4789, no learning, remote the other host, at the MTU of
//	    weavewg's VXLAN device (main.go sets it), 198.51.100.N/24 (outside
//	    the overlay range, which weavewg refuses to share with a local
//	    interface): host → host
//	(w) v with a container on each host, attached as weavewg attaches one
//	    (a bridge with proxy ARP, a veth pair, a /32 route; wgref.go's
//	    addBridgedContainer, as path e does for wireguard-go), the peer's
//	    container routed via its host's VXLAN address: container →
//	    container, the like-for-like of t
//	(t) weavewg with --trusted-subnets covering both underlay addresses:
//	    container → container, which crosses weavewg's VXLAN device
//	(u) t's hosts, host → host: the like-for-like of v
//
// v and w run on two hosts of their own that never run weavewg, so the
// baseline pays none of weavewg's nftables chains and conntrack (weavewg's
// rules hook every packet of a namespace it runs in, the raw VXLAN's too).
// t/w is held to ≥ 0.9 (what the fast path costs over the kernel's own
// VXLAN with the same container hops); t/v shows the container hops too.

// trustedHosts are the hosts of t and u, or of v and w.
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

// addRawHosts makes the two hosts of v and w: never launched.
func addRawHosts(bed *testbed.Bed) trustedHosts {
	a := bed.AddHost(testbed.HostOptions{NoLaunch: true, NoPeers: true})
	b := bed.AddHost(testbed.HostOptions{NoLaunch: true, NoPeers: true})
	return trustedHosts{a, b}
}

// rawVXLANAddr is host i's (0 or 1) address on the raw VXLAN device, and
// rawContainerAddr its container's (path w).
func rawVXLANAddr(i int) string     { return fmt.Sprintf("198.51.100.%d", i+1) }
func rawContainerAddr(i int) string { return fmt.Sprintf("198.51.100.%d", 101+i) }

// rawContainerNetns is the namespace of host h's container on path w.
func rawContainerNetns(h *testbed.Host) string { return h.Netns + "w" }

// startRawVXLAN makes the baseline devices, with containers when asked,
// and checks they carry a ping.
func startRawVXLAN(tb *benchTB, bed *testbed.Bed, rh trustedHosts, containers bool) error {
	hs := []*testbed.Host{rh.a, rh.b}
	for i, h := range hs {
		other := hs[1-i]
		bed.MustIP(h.Netns, "link", "add", "rvx0", "type", "vxlan", "id", "42", "dstport", "4789",
			"local", h.UnderlayIP, "remote", other.UnderlayIP, "nolearning")
		bed.MustIP(h.Netns, "link", "set", "rvx0", "mtu", fmt.Sprint(refMTU), "up")
		bed.MustIP(h.Netns, "addr", "add", rawVXLANAddr(i)+"/24", "dev", "rvx0")
		if containers {
			addBridgedContainer(tb, bed, h.Netns, rawContainerNetns(h), rawContainerAddr(i), refMTU)
			// The peer's container via the peer's VXLAN address, as
			// weavewg routes a peer's prefixes via its host address.
			bed.MustIP(h.Netns, "route", "add", rawContainerAddr(1-i)+"/32", "via", rawVXLANAddr(1-i), "dev", "rvx0")
		}
	}
	err := testbed.Poll(bed.TB(), 10*time.Second, "ping over raw VXLAN", func() error {
		return pingOnce(rh.a.Netns, rawVXLANAddr(1))
	})
	if err == nil && containers {
		err = testbed.Poll(bed.TB(), 10*time.Second, "container ping over raw VXLAN", func() error {
			return pingOnce(rawContainerNetns(rh.a), rawContainerAddr(1))
		})
	}
	return err
}

// setRawVXLANMTU sets the baseline's devices to mtu (weavewg's VXLAN
// device's).
func setRawVXLANMTU(bed *testbed.Bed, rh trustedHosts, containers bool, mtu int) {
	for _, h := range []*testbed.Host{rh.a, rh.b} {
		bed.MustIP(h.Netns, "link", "set", "rvx0", "mtu", fmt.Sprint(mtu))
		if containers {
			setBridgedContainerMTU(bed, h.Netns, rawContainerNetns(h), mtu)
		}
	}
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
