package integration

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// TestMalformedTraffic is acceptance 5 of issue 2: random bytes, truncated
// handshakes and oversized frames sent from another machine on the underlay
// to TCP and UDP 6783 leave every daemon running and every existing flow
// working, and the drops are counted in `status --json`.
func TestMalformedTraffic(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	hs := b.AddHosts(2)
	cs := b.AddContainers(1)
	attacker := b.AddNode(200)
	b.WaitMesh(30*time.Second, hs...)
	if err := cs[0].PingEventually(cs[1].Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	// An existing flow: a TCP echo between the containers, opened before
	// the attack and used again after it.
	l, err := testbed.Listen(cs[1].Netns, cs[1].Addr+":5006")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	flow, err := testbed.Dial(cs[0].Netns, cs[1].Addr+":5006", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	echo := func(msg string) error {
		flow.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintln(flow, msg); err != nil {
			return err
		}
		got, err := bufio.NewReader(flow).ReadString('\n')
		if err != nil {
			return err
		}
		if got != msg+"\n" {
			return fmt.Errorf("echo: got %q, want %q", got, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatalf("flow before the attack: %v", err)
	}

	target := hs[0]
	before := statusJSON(t, target)
	addr := target.UnderlayIP + ":6783"
	sent := attack(t, attacker, addr)
	t.Logf("sent to %s: %s", addr, sent)

	// Every daemon still running and the mesh intact.
	for _, h := range hs {
		if !h.Running() {
			t.Fatalf("%s's daemon died: %v\n%s", h, h.ExitErr(), h.Log())
		}
	}
	if err := echo("after"); err != nil {
		t.Errorf("flow after the attack: %v", err)
	}
	if err := cs[0].PingEventually(cs[1].Addr, 5*time.Second); err != nil {
		t.Errorf("ping after the attack: %v", err)
	}
	b.WaitMesh(10*time.Second, hs...)

	after := statusJSON(t, target)
	delta := func(names ...string) uint64 {
		return counterSum(after.Counters, names...) - counterSum(before.Counters, names...)
	}
	for name, v := range after.Counters {
		if d := v - before.Counters[name]; d != 0 {
			t.Logf("counter %s +%d", name, d)
		}
	}
	// Names from tunnel/counters.go and discovery/counters.go.
	if delta("udp_junk_dropped") == 0 {
		t.Errorf("random UDP datagrams not counted in udp_junk_dropped")
	}
	if delta("control_handshake_failed", "control_handshake_bad_secret", "control_handshake_ratelimited", "control_handshake_busy") == 0 {
		t.Errorf("bad control handshakes not counted")
	}
	if delta("control_frame_oversized", "control_handshake_ratelimited", "control_handshake_busy") == 0 {
		t.Errorf("oversized handshake frames not counted (nor rate-limited)")
	}
	for _, h := range hs {
		if !h.Running() {
			t.Errorf("%s's daemon died: %v", h, h.ExitErr())
		}
	}
}

// statusJSON reads the status through the CLI, as a script would.
func statusJSON(t *testing.T, h *testbed.Host) *api.Status {
	t.Helper()
	out := h.CLI("status", "--json")
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%s: status --json: %v in %q", h, err, out)
	}
	return &st
}

func randBytes(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

// attack sends bounded amounts of malformed traffic from namespace ns to
// addr (UDP and TCP) and returns a summary.
func attack(t *testing.T, ns, addr string) string {
	t.Helper()
	var udpN, tcpN int
	// UDP: random datagrams of many sizes, WireGuard-looking headers
	// followed by too little or garbage, empty and oversized datagrams.
	u, err := testbed.DialUDP(ns, addr)
	if err != nil {
		t.Fatal(err)
	}
	var dgrams [][]byte
	for i := 0; i < 200; i++ {
		n := 1 + i*7%1400
		d := randBytes(n)
		if d[0] >= 1 && d[0] <= 4 { // keep these junk, not WireGuard-shaped
			d[0] = 0x80 | d[0]
		}
		dgrams = append(dgrams, d)
	}
	for typ := byte(1); typ <= 4; typ++ {
		dgrams = append(dgrams,
			[]byte{typ, 0, 0, 0},                            // header only
			append([]byte{typ, 0, 0, 0}, randBytes(10)...),  // truncated
			append([]byte{typ, 0, 0, 0}, randBytes(144)...), // right size for an initiation, garbage
			append([]byte{typ, 0, 0, 0}, randBytes(1500)...))
	}
	dgrams = append(dgrams, []byte{}, randBytes(9000), randBytes(60000),
		append([]byte{0x21, 0x12, 0xa4, 0x42}, randBytes(16)...)) // STUN cookie at the wrong offset
	for _, d := range dgrams {
		if _, err := u.Write(d); err == nil {
			udpN++
		}
		time.Sleep(time.Millisecond)
	}
	u.Close()

	// TCP: each case on its own connection.
	cases := []struct {
		name string
		data []byte
	}{
		{"random", randBytes(1000)},
		{"random-large", randBytes(200000)},
		{"truncated-msg1", append([]byte{0, 48}, randBytes(10)...)},
		{"bad-msg1", append([]byte{0, 48}, randBytes(48)...)},
		{"oversized-frame", append([]byte{0xff, 0xff}, randBytes(4000)...)},
		{"just-over-bound", append([]byte{0x02, 0x01}, randBytes(513)...)},
		{"zero-length", []byte{0, 0, 0, 0}},
		{"one-byte", []byte{0x7f}},
		{"http", []byte("GET / HTTP/1.1\r\nHost: weavewg\r\n\r\n")},
		{"empty", nil},
	}
	for round := 0; round < 2; round++ {
		for _, c := range cases {
			conn, err := testbed.Dial(ns, addr, 5*time.Second)
			if err != nil {
				t.Logf("tcp %s: %v", c.name, err)
				continue
			}
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			conn.Write(c.data)
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			// Read whatever comes back until the daemon closes (or the
			// deadline): no answer is expected.
			n, _ := io.Copy(io.Discard, conn)
			if n > 0 {
				t.Logf("tcp %s: the daemon answered %d bytes to garbage", c.name, n)
			}
			conn.Close()
			tcpN++
			time.Sleep(50 * time.Millisecond)
		}
	}
	// A burst of connections that send nothing and close.
	for i := 0; i < 30; i++ {
		if conn, err := testbed.Dial(ns, addr, 2*time.Second); err == nil {
			conn.Close()
			tcpN++
		}
	}
	return strings.Join([]string{fmt.Sprintf("%d UDP datagrams", udpN), fmt.Sprintf("%d TCP connections", tcpN)}, ", ")
}
