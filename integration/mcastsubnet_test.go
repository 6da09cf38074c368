package integration

import (
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestMulticastSubnets: multicast and broadcast keep isolated subnets
// apart (issue 15). Three hosts with the default subnet 10.32.0.0/16;
// containers on 10.33.1.0/24 ("a"), 10.33.2.0/24 ("b") and the default
// subnet ("d"), every one of them a member of 239.1.1.1:
//
//	h1: a1 (the sender), a1x, b1, d1
//	h2: a2, b2, d2
//	h3: b3 (its only member is on another subnet than the sender's)
//
// 100 datagrams from a1 to the group reach a1x (same host) and a2
// (another host), none of the b or d members; h3 gets no copy at all.
// d2's reach d1 only, b3's b1 and b2 only. A
// directed broadcast to 10.33.1.255 and a broadcast to 255.255.255.255
// from a1 reach a1x and a2 and nobody else; a broadcast from d2 to the
// default subnet's 10.32.255.255 reaches d1 and nobody else. All of it
// holds after h2 is killed and relaunched.
func TestMulticastSubnets(t *testing.T) {
	needTool(t, "socat", "tcpdump")
	args := []string{"--ipalloc-range", "10.32.0.0/12", "--ipalloc-default-subnet", "10.32.0.0/16"}
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	var hs []*testbed.Host
	for range 3 {
		hs = append(hs, b.AddHost(testbed.HostOptions{Args: args}))
	}
	b.WaitMesh(60*time.Second, hs...)
	nets := map[byte]string{'a': "10.33.1.0/24", 'b': "10.33.2.0/24", 'd': ""}
	add := func(h *testbed.Host, name string) *testbed.Container {
		c, err := h.AddContainerOpts(name, nets[name[0]], false)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s on %s: %s", c, h, c.IP)
		return c
	}
	a1, a1x, b1, d1 := add(hs[0], "a1"), add(hs[0], "a1x"), add(hs[0], "b1"), add(hs[0], "d1")
	a2, b2, d2 := add(hs[1], "a2"), add(hs[1], "b2"), add(hs[1], "d2")
	b3 := add(hs[2], "b3")
	all := []*testbed.Container{a1, a1x, b1, d1, a2, b2, d2, b3}

	group := map[*testbed.Container]*receiver{}
	bcast := map[*testbed.Container]*receiver{}
	for _, c := range all {
		group[c] = startReceiver(t, b, c, 5000, "239.1.1.1")
		bcast[c] = startReceiver(t, b, c, 5001, "")
	}
	// Every member is joined and reachable from its own subnet before
	// anything is counted: a zero below is isolation, not a late join.
	warmUp(t, a1, "239.1.1.1:5000", group[a1x], group[a2])
	warmUp(t, b3, "239.1.1.1:5000", group[b1], group[b2])
	warmUp(t, d2, "239.1.1.1:5000", group[d1])
	warmUp(t, a1, "10.33.1.255:5001", bcast[a1x], bcast[a2])

	tun3 := startTunCapture(t, hs[2])
	before := hs[0].Status().Counters
	send(t, a1, "239.1.1.1:5000", numbered("m", 100)...)
	send(t, a1, "10.33.1.255:5001", numbered("directed", 10)...)
	send(t, a1, "255.255.255.255:5001", numbered("limited", 10)...)
	send(t, d2, "10.32.255.255:5001", numbered("default", 10)...)
	send(t, d2, "239.1.1.1:5000", numbered("dm", 20)...)
	for _, c := range []*testbed.Container{a1x, a2} {
		waitReceived(t, group[c], "m ", 100)
		waitReceived(t, bcast[c], "directed ", 10)
		waitReceived(t, bcast[c], "limited ", 10)
	}
	waitReceived(t, bcast[d1], "default ", 10)
	waitReceived(t, group[d1], "dm ", 20)
	time.Sleep(time.Second)
	for _, c := range all {
		want := map[string]int{"m ": 0, "directed ": 0, "limited ": 0, "default ": 0, "dm ": 0}
		switch c {
		case a1x, a2:
			want["m "], want["directed "], want["limited "] = 100, 10, 10
		case d1:
			want["default "], want["dm "] = 10, 20
		case a1:
			continue // the sender's own socket
		}
		got := map[string]int{
			"m ":        group[c].lines("m "),
			"directed ": bcast[c].lines("directed "),
			"limited ":  bcast[c].lines("limited "),
			"default ":  bcast[c].lines("default "),
			"dm ":       group[c].lines("dm "),
		}
		if d2 == c {
			got["default "], got["dm "] = 0, 0 // its own
		}
		for k, w := range want {
			if got[k] != w {
				t.Errorf("%s (%s on %s) received %d datagrams %q, want %d", c, c.IP, c.Host, got[k], k, w)
			}
		}
	}
	// Replication is scoped too: a1's datagrams go to h2 only (h3's only
	// member is on 10.33.2.0/24), one copy each.
	after := hs[0].Status().Counters
	if got := after["mcast_tx_replicated"] - before["mcast_tx_replicated"]; got != 100+10+10 {
		t.Errorf("h1 sent %d copies of 120 datagrams with members on one other host, want 120", got)
	}
	time.Sleep(500 * time.Millisecond)
	if n := tun3.seen(); n != 0 {
		t.Errorf("h3 (members on another subnet only) saw %d replicated datagrams on its TUN", n)
	}
	// And 10.33.2.0/24's own datagrams reach its members on every host.
	send(t, b3, "239.1.1.1:5000", numbered("bm", 20)...)
	waitReceived(t, group[b1], "bm ", 20)
	waitReceived(t, group[b2], "bm ", 20)
	for _, c := range []*testbed.Container{a1, a1x, d1, a2, d2} {
		if n := group[c].lines("bm "); n != 0 {
			t.Errorf("%s (%s on %s) received %d of b3's group datagrams, want none", c, c.IP, c.Host, n)
		}
	}

	// A relaunched h2 (SIGKILL: nothing cleaned up) keeps both the
	// delivery to its 10.33.1.0/24 member and the isolation of the others.
	hs[1].Restart()
	b.WaitMesh(60*time.Second, hs...)
	warmUp(t, a1, "239.1.1.1:5000", group[a2])
	warmUp(t, a1, "10.33.1.255:5001", bcast[a2])
	send(t, a1, "239.1.1.1:5000", numbered("r", 20)...)
	send(t, a1, "10.33.1.255:5001", numbered("rb", 10)...)
	waitReceived(t, group[a2], "r ", 20)
	waitReceived(t, bcast[a2], "rb ", 10)
	for _, c := range []*testbed.Container{b1, d1, b2, d2, b3} {
		if n, m := group[c].lines("r "), bcast[c].lines("rb "); n != 0 || m != 0 {
			t.Errorf("after h2's relaunch, %s (%s on %s) received %d of a1's group datagrams and %d broadcasts, want none", c, c.IP, c.Host, n, m)
		}
	}

	if t.Failed() {
		for _, h := range hs {
			t.Logf("%s", mcastCounters(h))
		}
		out, _ := hs[0].Exec("nft", "list", "table", "bridge", "weavewg_weavewg0")
		t.Logf("h1's bridge table:\n%s", out)
	}
}
