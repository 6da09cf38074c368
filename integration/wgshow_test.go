package integration

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// wgDumpPeer is one peer line of `wg show IFACE dump`.
type wgDumpPeer struct {
	endpoint   string
	allowedIPs []string
	handshake  int64 // unix seconds, 0 never
}

func parseWGDump(t *testing.T, out string) (pub string, peers map[string]wgDumpPeer) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	iface := strings.Split(lines[0], "\t")
	if len(iface) != 4 {
		t.Fatalf("wg dump interface line %q: want 4 fields", lines[0])
	}
	peers = map[string]wgDumpPeer{}
	for _, l := range lines[1:] {
		f := strings.Split(l, "\t")
		if len(f) != 8 {
			t.Fatalf("wg dump peer line has %d fields, want 8", len(f))
		}
		hs, _ := strconv.ParseInt(f[4], 10, 64)
		ips := strings.Split(f[3], ",")
		slices.Sort(ips)
		peers[f[0]] = wgDumpPeer{endpoint: f[2], allowedIPs: ips, handshake: hs}
	}
	return iface[1], peers
}

// TestWGShow is issue 19's acceptance 6: wireguard-tools' `wg show
// weavewg0` on a host lists every peer with its endpoint, allowed IPs and
// latest handshake, matching `weavewg status`; the socket is read-only.
func TestWGShow(t *testing.T) {
	needTool(t, "wg", "unshare")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(3)
	cs := b.AddContainers(1)
	b.WaitMesh(30*time.Second, hs...)
	// Traffic to every peer, so every WireGuard session has handshaken.
	for _, r := range testbed.PingMatrix(cs, 20*time.Second) {
		if r.Err != nil {
			t.Fatalf("ping %s → %s: %v", r.From, r.To, r.Err)
		}
	}

	h1 := hs[0]
	st := checkWGShow(t, h1, len(hs)-1)

	// The human form names the same things.
	human, err := h1.WG("show", "weavewg0")
	t.Logf("h1# wg show weavewg0\n%s\nh1# weavewg status connections\n%s", human, h1.CLI("status", "connections"))
	if err != nil || !strings.Contains(human, "latest handshake:") || !strings.Contains(human, "allowed ips:") {
		t.Errorf("wg show weavewg0:\n%s %v", human, err)
	}
	// Each host's socket is its own device.
	for _, h := range hs[1:] {
		k, err := h.WG("show", "weavewg0", "public-key")
		if err != nil || strings.TrimSpace(k) != testbed.Self(h.Status()).PublicKey {
			t.Errorf("wg show on %s gives key %q (%v), want its own", h, k, err)
		}
	}
	// Read-only: weavewg owns the configuration.
	victim := testbed.PeerByNick(st, hs[1].Name).PublicKey
	if out, err := h1.WG("set", "weavewg0", "peer", victim, "remove"); err == nil {
		t.Errorf("wg set on weavewg0 succeeded: %s", out)
	}
	if out, _ := h1.WG("show", "weavewg0", "peers"); !strings.Contains(out, victim) {
		t.Errorf("peer %s gone after a refused wg set", hs[1])
	}
}

// checkWGShow runs `wg show weavewg0 dump` on h and checks it against h's
// status: want peers, each with the endpoint status shows (none when
// relayed), its host address and IPAM ranges as allowed IPs, and the
// handshake status shows. It returns h's status.
func checkWGShow(t *testing.T, h *testbed.Host, want int) *api.Status {
	t.Helper()
	out, err := h.WG("show", "weavewg0", "dump")
	if err != nil {
		t.Fatalf("wg show weavewg0 dump on %s: %v", h, err)
	}
	st := h.Status()
	pub, peers := parseWGDump(t, out)
	if pub != testbed.Self(st).PublicKey {
		t.Errorf("wg shows public key %s, status %s", pub, testbed.Self(st).PublicKey)
	}
	if len(peers) != want {
		t.Errorf("wg shows %d peers, want %d", len(peers), want)
	}
	ranges := map[string][]string{}
	for _, p := range st.IPAM.Peers {
		ranges[p.Peer] = p.Ranges
	}
	for _, p := range st.Peers {
		if p.Self {
			continue
		}
		wp, ok := peers[p.PublicKey]
		if !ok {
			t.Errorf("wg show lacks peer %s (%s)", p.Nickname, p.PublicKey)
			continue
		}
		var conn *api.Connection
		for _, c := range testbed.ConnsTo(st, p.Nickname) {
			if c.LastHandshake != nil {
				conn = &c
			}
		}
		if conn == nil {
			t.Errorf("status connections shows no WireGuard session with %s", p.Nickname)
			continue
		}
		// A peer that just got its first space gives a container an
		// address before its next reconcile takes one for the host, so
		// for a moment it advertises no host address (CI, h3 in
		// TestWGShowRelayed): then wg must not route one either.
		var want []string
		if p.HostIP != "" {
			want = append(want, p.HostIP+"/32")
		}
		want = append(want, ranges[p.Name]...)
		slices.Sort(want)
		if !slices.Equal(wp.allowedIPs, want) {
			t.Errorf("%s: wg allowed ips %v, status has host address and ranges %v", p.Nickname, wp.allowedIPs, want)
		}
		if conn.Direct && wp.endpoint != conn.Endpoint {
			t.Errorf("%s: wg endpoint %s, status %s", p.Nickname, wp.endpoint, conn.Endpoint)
		}
		if !conn.Direct && wp.endpoint != "(none)" {
			t.Errorf("%s is relayed in status, wg shows endpoint %s", p.Nickname, wp.endpoint)
		}
		// status truncates to the second; the dump is whole seconds.
		if d := wp.handshake - conn.LastHandshake.Unix(); wp.handshake == 0 || d < -1 || d > 1 {
			t.Errorf("%s: wg latest handshake %d, status %v", p.Nickname, wp.handshake, conn.LastHandshake)
		}
	}

	return st
}

// TestWGShowRelayed: with A–C blocked on the underlay, A reaches C through
// B; wg show on A still works (the relay endpoint is not handed to wg,
// which would fail on it) and shows C with its allowed IPs and no endpoint.
func TestWGShowRelayed(t *testing.T) {
	needTool(t, "wg", "unshare", "ping", "nft")
	_, hs := lineBed(t, 3)
	ca, cb, cc := hs[0].AddContainer(), hs[1].AddContainer(), hs[2].AddContainer()
	// Traffic to both peers, so both WireGuard sessions have handshaken: a
	// peer that only relays for h1 carries none of h1's sessions, and
	// keepalives alone need not have started one (see reach's rules).
	for _, c := range []*testbed.Container{cc, cb} {
		if err := ca.PingEventually(c.Addr, 40*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := hs[0].WaitPath("h3", "relayed via h2", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st := checkWGShow(t, hs[0], 2)
	human, _ := hs[0].WG("show", "weavewg0")
	t.Logf("h1# wg show weavewg0\n%s\nh1# weavewg status connections\n%s", human, hs[0].CLI("status", "connections"))
	if c := testbed.ConnsTo(st, "h3"); len(c) == 0 || c[len(c)-1].Direct {
		t.Errorf("status shows h3 direct, want relayed: %+v", c)
	}
}
