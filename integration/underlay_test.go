package integration

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestUnderlayOnlyPort6783 is acceptance 2 of issue 2: while containers talk
// across the overlay, the underlay carries only UDP and TCP port 6783 (and
// ARP), and a marker sent in the clear between containers never shows up in
// a capture of the underlay.
func TestUnderlayOnlyPort6783(t *testing.T) {
	needTool(t, "tcpdump", "ping")
	b := newBed(t, testbed.Options{})
	// The capture starts before the daemons, so the control handshakes and
	// gossip are inspected too.
	cap := b.StartCapture("underlay")
	hs := b.AddHosts(2)
	cs := b.AddContainers(1)
	b.WaitMesh(30*time.Second, hs...)
	if err := cs[0].PingEventually(cs[1].Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	marker := []byte("WEAVEWG-PLAINTEXT-MARKER-" + b.Prefix)
	payload := bytes.Repeat(marker, 2000) // 80 KB or so: many segments

	// TCP, container 1 → container 2.
	l, err := testbed.Listen(cs[1].Netns, cs[1].Addr+":5002")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan int, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- int(n)
	}()
	c, err := testbed.Dial(cs[0].Netns, cs[1].Addr+":5002", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(payload)
	c.Close()
	if n := <-got; n != len(payload) {
		t.Fatalf("TCP over the overlay: received %d bytes, sent %d", n, len(payload))
	}

	// UDP both ways, and pings with the marker as padding.
	for _, pair := range [][2]*testbed.Container{{cs[0], cs[1]}, {cs[1], cs[0]}} {
		u, err := testbed.DialUDP(pair[0].Netns, pair[1].Addr+":5003")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20; i++ {
			u.Write(marker)
		}
		u.Close()
	}
	if out, err := cs[0].Exec("ping", "-c", "3", "-i", "0.2", "-n", "-q", "-p", fmt.Sprintf("%x", marker[:16]), cs[1].Addr); err != nil {
		t.Fatalf("ping with marker pattern: %v %s", err, out)
	}
	// Host to remote container through the host address.
	u, err := testbed.DialUDP(hs[0].Netns, cs[1].Addr+":5004")
	if err != nil {
		t.Fatal(err)
	}
	u.Write(marker)
	u.Close()

	if err := cap.Stop(); err != nil {
		t.Logf("tcpdump: %v", err)
	}
	ps, err := cap.Packets()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	bad := 0
	for _, p := range ps {
		switch {
		case p.EtherType == 0x0806:
			kinds["arp"]++
		case p.Proto == 17 && (p.SPort == 6783 || p.DPort == 6783):
			kinds["udp/6783"]++
		case p.Proto == 6 && (p.SPort == 6783 || p.DPort == 6783):
			kinds["tcp/6783"]++
		case p.Fragment && p.Proto == 17:
			// Non-first fragments of large WireGuard datagrams carry no
			// ports; their first fragment was checked.
			kinds["udp-fragment"]++
		default:
			kinds["other"]++
			if bad++; bad <= 10 {
				t.Errorf("unexpected packet on the underlay: %v", p)
			}
		}
	}
	t.Logf("underlay capture: %d packets: %v", len(ps), kinds)
	if kinds["udp/6783"] < 50 || kinds["tcp/6783"] == 0 {
		t.Errorf("capture saw too little of the mesh (want ≥50 UDP and some TCP on 6783): %v", kinds)
	}
	raw, err := cap.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.Index(raw, marker[:20]); i >= 0 {
		t.Errorf("plaintext marker found in the underlay capture at byte %d", i)
	}
}
