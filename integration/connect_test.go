package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestConnectForget is acceptance 6 of issue 2: `weavewg connect` and
// `weavewg forget` change a running mesh, and `weavewg status` shows it.
func TestConnectForget(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	var hs []*testbed.Host
	for i := 0; i < 3; i++ {
		hs = append(hs, b.AddHost(testbed.HostOptions{NoPeers: true}))
	}
	// Only h1's network is used before the connects; h2's and h3's (each
	// launched alone) were never used, so they join h1's when connected.
	cs := b.AddContainers(1, hs[0])
	for _, h := range hs {
		st := h.Status()
		if len(st.Peers) != 1 || len(st.Conns) != 0 {
			t.Fatalf("%s launched with no peers knows %d peers and %d connections", h, len(st.Peers), len(st.Conns))
		}
	}
	// Each host is its own network so far: h1 routes nothing into the
	// tunnel. (h2's host address may well equal h1's: each allocated the
	// first address of its own network.)
	if out, err := hs[0].Exec("ip", "route", "show", "proto", "87"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("unconnected h1 routes into the tunnel: %v %s", err, out)
	}

	// A chain: h2 → h1, h3 → h2, both at once. Gossip tells h1 and h3 of
	// each other. h2 may see h3's fresh network before h1's used one, give
	// way to h3's and get space from h3; {h2, h3}, holding no container,
	// then gives way to h1's (ipam/giveway.go): IPAM ends as one network.
	h1Net := hs[0].Status().IPAM.Network
	hs[1].CLI("connect", hs[0].UnderlayIP)
	hs[2].CLI("connect", hs[1].UnderlayIP+":6783")
	b.WaitMesh(30*time.Second, hs[0], hs[1])
	b.WaitMesh(30*time.Second, hs[1], hs[2])
	testbed.Eventually(t, 30*time.Second, "h1 and h3 see each other reachable", func() error {
		for _, p := range [][2]*testbed.Host{{hs[0], hs[2]}, {hs[2], hs[0]}} {
			st, err := p[0].StatusErr()
			if err != nil {
				return err
			}
			if peer := testbed.PeerByNick(st, p[1].Name); peer == nil || !peer.Reachable {
				return errorf("%s does not see %s reachable", p[0], p[1])
			}
		}
		return nil
	})
	// h2 and h3 gave their networks up for h1's, host addresses with them,
	// and got new ones from h1's ring: every host address is distinct.
	testbed.Eventually(t, 30*time.Second, "one IPAM network, h1's", func() error {
		for _, h := range hs {
			st, err := h.StatusErr()
			if err != nil {
				return err
			}
			if st.IPAM.Network != h1Net {
				return errorf("%s is on IPAM network %q, h1's is %q", h, st.IPAM.Network, h1Net)
			}
		}
		return nil
	})
	testbed.Eventually(t, 30*time.Second, "distinct host addresses", func() error {
		return distinctHostIPs(hs)
	})
	cs = append(cs, b.AddContainers(1, hs[1], hs[2])...)
	for _, p := range [][2]*testbed.Container{{cs[0], cs[1]}, {cs[0], cs[2]}, {cs[2], cs[1]}} {
		if err := p[0].PingEventually(p[1].Addr, 20*time.Second); err != nil {
			t.Errorf("after connect: %v", err)
		}
	}

	// The human view shows the peers and the connections.
	if out := hs[1].CLI("status"); !strings.Contains(out, hs[1].Name) || !strings.Contains(out, "Peers") {
		t.Errorf("weavewg status on h2 shows neither its name nor a Peers line:\n%s", out)
	}
	out := hs[1].CLI("status", "peers")
	t.Logf("h2# weavewg status peers\n%s", out)
	for _, h := range hs {
		if !strings.Contains(out, "("+h.Name+")") {
			t.Errorf("weavewg status peers on h2 does not show %s", h)
		}
	}
	out = hs[1].CLI("status", "connections")
	t.Logf("h2# weavewg status connections\n%s", out)
	for _, h := range []*testbed.Host{hs[0], hs[2]} {
		found := false
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, h.UnderlayIP) && strings.Contains(l, "established") {
				found = true
			}
		}
		if !found {
			t.Errorf("weavewg status connections on h2 shows no established connection with %s (%s)", h, h.UnderlayIP)
		}
	}

	// connect to an address where nothing listens: the target shows up and
	// is retried; forget removes it.
	dead := b.AddHost(testbed.HostOptions{NoLaunch: true})
	deadAddr := dead.UnderlayIP + ":6783"
	hs[0].CLI("connect", deadAddr)
	testbed.Eventually(t, 10*time.Second, "h1 shows the target "+deadAddr, func() error {
		st, err := hs[0].StatusErr()
		if err != nil {
			return err
		}
		for _, c := range st.Conns {
			if c.Address == deadAddr {
				if c.State == "established" {
					return testbed.Permanent{Err: errorf("a connection to %s where nothing listens is established", deadAddr)}
				}
				return nil
			}
		}
		return errorf("no connection entry for %s", deadAddr)
	})
	hs[0].CLI("forget", deadAddr)
	testbed.Eventually(t, 10*time.Second, "h1 forgets "+deadAddr, func() error {
		st, err := hs[0].StatusErr()
		if err != nil {
			return err
		}
		for _, c := range st.Conns {
			if c.Address == deadAddr {
				return errorf("still listed: %+v", c)
			}
		}
		return nil
	})
	if _, err := hs[0].CLIErr("forget", "192.0.2.77:6783"); err == nil {
		t.Errorf("forget of an address that is not a target succeeded")
	}

	// forget a live target: h3 stops dialling h2. The connection goes; h3
	// may get back into the mesh only through a peer that dials it.
	hs[2].CLI("forget", hs[1].UnderlayIP+":6783")
	testbed.Eventually(t, 10*time.Second, "h3 drops its target h2", func() error {
		st, err := hs[2].StatusErr()
		if err != nil {
			return err
		}
		for _, c := range st.Conns {
			if c.Outbound && c.Address == hs[1].UnderlayIP+":6783" && c.State != "established" {
				return errorf("h3 still dials %s: %+v", c.Address, c)
			}
		}
		return nil
	})
	for _, h := range hs {
		if !h.Running() {
			t.Errorf("%s died", h)
		}
	}
}

// distinctHostIPs is nil when every host in hs has a host address and no
// two share one.
func distinctHostIPs(hs []*testbed.Host) error {
	seen := map[string]string{}
	for _, h := range hs {
		st, err := h.StatusErr()
		if err != nil {
			return err
		}
		if st.HostIP == "" {
			return errorf("%s has no host address", h)
		}
		if other, dup := seen[st.HostIP]; dup {
			return errorf("%s and %s both have host address %s", other, h, st.HostIP)
		}
		seen[st.HostIP] = h.Name
	}
	return nil
}
