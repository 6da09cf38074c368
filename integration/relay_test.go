package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/key"
)

// underlay is host n's underlay address.
func underlay(n int) string { return fmt.Sprintf("%s%d", testbed.UnderlayNet, n) }

// lineBed makes n hosts in a line: host i is told only about host i-1, and
// every pair that is not adjacent is blocked on the underlay before any
// daemon starts, so each host sees only its neighbours.
func lineBed(t *testing.T, n int) (*testbed.Bed, []*testbed.Host) {
	b := newBed(t, testbed.Options{})
	for i := 1; i <= n; i++ {
		for j := i + 2; j <= n; j++ {
			b.Block(underlay(i), underlay(j))
		}
	}
	var hs []*testbed.Host
	for i := 1; i <= n; i++ {
		opts := testbed.HostOptions{NoPeers: i == 1}
		if i > 1 {
			opts.Peers = []string{underlay(i - 1)}
		}
		hs = append(hs, b.AddHost(opts))
	}
	// Every host must know every other as reachable.
	for _, h := range hs {
		testbed.Eventually(t, 60*time.Second, h.Name+" reaches every peer", func() error {
			st, err := h.StatusErr()
			if err != nil {
				return err
			}
			for _, o := range hs {
				if p := testbed.PeerByNick(st, o.Name); p == nil || !p.Reachable {
					return fmt.Errorf("%s not reachable", o)
				}
			}
			return nil
		})
	}
	return b, hs
}

// TestRelayThroughMiddle is acceptance 1 of issue 3: A–B and B–C reachable,
// A–C blocked. Containers on A and C reach each other through B, which sees
// only WireGuard ciphertext: a plaintext marker never shows on the underlay.
func TestRelayThroughMiddle(t *testing.T) {
	needTool(t, "ping", "tcpdump", "nft")
	b, hs := lineBed(t, 3)
	cap := b.StartCapture("relay")
	ca, cc := hs[0].AddContainer(), hs[2].AddContainer()
	if err := ca.PingEventually(cc.Addr, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := hs[0].WaitPath("h3", "relayed via h2", 10*time.Second); err != nil {
		t.Error(err)
	}
	if _, err := hs[2].WaitPath("h1", "relayed via h2", 10*time.Second); err != nil {
		t.Error(err)
	}
	marker := []byte("WEAVEWG-RELAY-MARKER-" + b.Prefix)
	if out, err := ca.Exec("ping", "-c", "5", "-i", "0.2", "-n", "-q", "-s", "1000", "-p", fmt.Sprintf("%x", marker[:16]), cc.Addr); err != nil {
		t.Fatalf("ping with marker: %v %s", err, out)
	}
	r, err := testbed.Transfer(cc, ca, 5011, 2<<20, 60*time.Second)
	if err != nil {
		t.Fatalf("transfer C → A: %v", err)
	}
	t.Logf("C → A through B: %d bytes in %v (%.0f Mbit/s)", r.Bytes, r.Took.Round(time.Millisecond), r.Mbps())
	u, err := testbed.DialUDP(ca.Netns, cc.Addr+":5012")
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		u.Write(marker)
	}
	u.Close()
	cap.Stop()
	ps, err := cap.Packets()
	if err != nil {
		t.Fatal(err)
	}
	a, c := netip.MustParseAddr(underlay(1)), netip.MustParseAddr(underlay(3))
	viaB := 0
	for _, p := range ps {
		if (p.Src == a && p.Dst == c) || (p.Src == c && p.Dst == a) {
			// Blocked in the underlay's forward chain but seen by the capture:
			// only attempts on port 6783 (control dials, probes) may show.
			if p.DPort != 6783 && p.SPort != 6783 {
				t.Errorf("A↔C packet not on port 6783: %v", p)
			}
			continue
		}
		if p.Proto == 17 && (p.Src == a || p.Src == c || p.Dst == a || p.Dst == c) {
			viaB++
		}
	}
	if viaB < 100 {
		t.Errorf("only %d UDP packets between A or C and B; the transfer went elsewhere?", viaB)
	}
	raw, _ := cap.Bytes()
	if i := bytes.Index(raw, marker[:16]); i >= 0 {
		t.Errorf("plaintext marker found in the underlay capture at byte %d", i)
	}
	st := hs[1].Status()
	t.Logf("B forwarded %d frames; counters %v", st.Counters["udp_relay_forwarded"], relayCounters(st.Counters))
	if st.Counters["udp_relay_forwarded"] < 100 {
		t.Errorf("B forwarded only %d relay frames", st.Counters["udp_relay_forwarded"])
	}
	t.Logf("h1# weavewg status connections\n%s", hs[0].CLI("status", "connections"))
}

// TestRelayLine is acceptance 2: five hosts in a line; the two ends'
// containers exchange a 20 MB file intact.
func TestRelayLine(t *testing.T) {
	needTool(t, "ping", "nft")
	_, hs := lineBed(t, 5)
	c1, c5 := hs[0].AddContainer(), hs[4].AddContainer()
	if err := c1.PingEventually(c5.Addr, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, dir := range [][2]*testbed.Container{{c1, c5}, {c5, c1}} {
		r, err := testbed.Transfer(dir[0], dir[1], 5021, 20<<20, 120*time.Second)
		if err != nil {
			t.Fatalf("transfer %s → %s: %v", dir[0], dir[1], err)
		}
		t.Logf("%s → %s over 4 hops: %d bytes in %v (%.0f Mbit/s), sha256 %x", dir[0], dir[1], r.Bytes, r.Took.Round(time.Millisecond), r.Mbps(), r.SHA256[:8])
	}
	if p := testbed.PathTo(hs[0].Status(), "h5"); p != "relayed via h2" {
		t.Errorf("h1's path to h5 is %q, want relayed via h2", p)
	}
	t.Logf("h3# weavewg status peers\n%s", hs[2].CLI("status", "peers"))
}

// TestRelayFailover is acceptance 3: A–C direct; block it under a running
// ping: at most 10 s of replies are lost, then the pair goes through B;
// unblock: direct again within 30 s, and status says so.
func TestRelayFailover(t *testing.T) {
	needTool(t, "ping", "nft")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(3)
	b.WaitMesh(30*time.Second, hs...)
	ca, cc := hs[0].AddContainer(), hs[2].AddContainer()
	if err := ca.PingEventually(cc.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := hs[0].WaitPath("h3", "direct", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ping, err := ca.StartPing(cc.Addr, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	b.BlockHosts(hs[0], hs[2])
	took, err := hs[0].WaitPath("h3", "relayed via h2", 20*time.Second)
	if err != nil {
		t.Error(err)
	} else {
		t.Logf("relayed %.1fs after the block", took.Seconds())
	}
	before := ping.Replies()
	testbed.Eventually(t, 15*time.Second, "ping answers through B", func() error {
		if ping.Replies() < before+5 {
			return fmt.Errorf("%d replies since the switch", ping.Replies()-before)
		}
		return nil
	})
	t.Logf("h1# weavewg status connections (blocked)\n%s", hs[0].CLI("status", "connections"))
	b.UnblockHosts(hs[0], hs[2])
	took, err = hs[0].WaitPath("h3", "direct", 30*time.Second)
	if err != nil {
		t.Error(err)
	} else {
		t.Logf("direct again %.1fs after the unblock", took.Seconds())
	}
	if _, err := hs[2].WaitPath("h1", "direct", 30*time.Second); err != nil {
		t.Error(err)
	}
	time.Sleep(2 * time.Second)
	replies, gap := ping.Stop()
	t.Logf("ping: %d replies, longest loss %v", replies, gap)
	if gap > 10*time.Second {
		t.Errorf("ping lost %v of replies in a row, want ≤ 10s", gap)
	}
	t.Logf("h1# weavewg status connections\n%s", hs[0].CLI("status", "connections"))
}

// TestRelayPeerLeaves is acceptance 4: a killed peer disappears from routes
// and traffic between the others goes on.
func TestRelayPeerLeaves(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(4)
	b.WaitMesh(30*time.Second, hs...)
	ca, cc := hs[0].AddContainer(), hs[2].AddContainer()
	cd := hs[3].AddContainer()
	if err := ca.PingEventually(cc.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := ca.PingEventually(cd.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	ping, err := ca.StartPing(cc.Addr, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	hostIP4 := strings.Split(hs[3].Status().HostIP, "/")[0]
	hs[3].Kill()
	testbed.Eventually(t, 30*time.Second, "h4 gone from h1's routes", func() error {
		st, err := hs[0].StatusErr()
		if err != nil {
			return err
		}
		if p := testbed.PeerByNick(st, "h4"); p != nil && p.Reachable {
			return fmt.Errorf("h4 still reachable")
		}
		out, err := hs[0].Exec("ip", "route", "show", "dev", "weavewg0")
		if err != nil {
			return err
		}
		if strings.Contains(out, hostIP4+" ") || strings.Contains(out, cd.Addr) {
			return fmt.Errorf("routes still name h4:\n%s", out)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	replies, gap := ping.Stop()
	t.Logf("ping h1 → h3 while h4 died: %d replies, longest loss %v", replies, gap)
	if gap > time.Second || replies == 0 {
		t.Errorf("traffic between the others was disturbed: %d replies, longest loss %v", replies, gap)
	}
}

// TestRelayDropsStrangers is acceptance 5: relay frames from an address that
// is not a member (claiming to be forwarded from A by a relay), and frames
// naming a peer that does not exist, are dropped and counted; the relay
// keeps working.
func TestRelayDropsStrangers(t *testing.T) {
	needTool(t, "ping", "nft")
	b, hs := lineBed(t, 3)
	ca, cc := hs[0].AddContainer(), hs[2].AddContainer()
	if err := ca.PingEventually(cc.Addr, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	before := hs[1].Status().Counters
	bAddr := netip.MustParseAddrPort(underlay(2) + ":6783")

	var unknown tunnel.PeerID
	rand.Read(unknown[:])
	frame := func(dst, src tunnel.PeerID, forwarded bool) []byte {
		f := tunnel.AppendRelayHeader(nil, tunnel.RelayHeader{Type: tunnel.RelayTypeData, HopLimit: 8, Forwarded: forwarded, Dst: dst, Src: src})
		return append(f, bytes.Repeat([]byte{4, 0, 0, 0}, 16)...)
	}
	idOf := func(h *testbed.Host) tunnel.PeerID {
		k, err := key.ParsePublic(testbed.Self(h.Status()).PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return tunnel.PeerIDOf(k)
	}
	idA, idC := idOf(hs[0]), idOf(hs[2])
	stranger := b.AddNode(200)
	const n = 50
	for range n {
		// From a non-member address, claiming to forward A's frame for C.
		if err := testbed.SendRawUDP(stranger, netip.MustParseAddrPort(underlay(200)+":6783"), bAddr, frame(idC, idA, true)); err != nil {
			t.Fatal(err)
		}
		// From member A's own address and port, naming a peer that does not exist.
		if err := testbed.SendRawUDP(hs[0].Netns, netip.MustParseAddrPort(underlay(1)+":6783"), bAddr, frame(unknown, unknown, false)); err != nil {
			t.Fatal(err)
		}
	}
	testbed.Eventually(t, 10*time.Second, "B counts the dropped frames", func() error {
		c := hs[1].Status().Counters
		src := c["udp_relay_dropped_unknown_source"] - before["udp_relay_dropped_unknown_source"]
		peer := c["udp_relay_dropped_unknown_peer"] - before["udp_relay_dropped_unknown_peer"]
		if src < n || peer < n {
			return fmt.Errorf("unknown source %d, unknown peer %d; want %d each", src, peer, n)
		}
		return nil
	})
	if err := ca.PingEventually(cc.Addr, 5*time.Second); err != nil {
		t.Errorf("relay stopped working: %v", err)
	}
	t.Logf("B's relay counters: %v", relayCounters(hs[1].Status().Counters))
}

func relayCounters(c map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range c {
		if strings.HasPrefix(k, "udp_relay") && v != 0 {
			out[k] = v
		}
	}
	return out
}
