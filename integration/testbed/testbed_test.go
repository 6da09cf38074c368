package testbed

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func needBed(t *testing.T) {
	t.Helper()
	if err := Check(); err != nil {
		t.Skip(err)
	}
}

func needTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s is not installed (make test installs it)", n)
		}
	}
}

func netnsWithPrefix(prefix string) []string {
	names, _ := listNetns()
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// TestUnderlay builds three daemon-less hosts and checks the underlay, the
// nftables blocks, the capture, sockets in namespaces and the cleanup.
func TestUnderlay(t *testing.T) {
	needBed(t)
	needTools(t, "ping", "nft", "tcpdump")
	var prefix string
	t.Run("bed", func(t *testing.T) {
		b := New(t, Options{})
		prefix = b.Prefix
		hs := []*Host{}
		for i := 0; i < 3; i++ {
			hs = append(hs, b.AddHost(HostOptions{NoLaunch: true}))
		}
		x := b.AddNode(200)
		cap := b.StartCapture("underlay")
		for _, h := range hs {
			for _, o := range hs {
				if h != o {
					if _, err := h.Exec("ping", "-c1", "-W2", "-n", "-q", o.UnderlayIP); err != nil {
						t.Fatalf("%s → %s: %v", h, o, err)
					}
				}
			}
		}
		b.BlockHosts(hs[0], hs[1])
		if _, err := hs[0].Exec("ping", "-c1", "-W1", "-n", "-q", hs[1].UnderlayIP); err == nil {
			t.Fatalf("ping went through a blocked path")
		}
		if _, err := hs[0].Exec("ping", "-c1", "-W1", "-n", "-q", hs[2].UnderlayIP); err != nil {
			t.Fatalf("block of h1-h2 broke h1-h3: %v", err)
		}
		b.UnblockHosts(hs[0], hs[1])
		if _, err := hs[0].Exec("ping", "-c1", "-W2", "-n", "-q", hs[1].UnderlayIP); err != nil {
			t.Fatalf("unblock: %v", err)
		}

		// Go sockets inside namespaces: h2 listens, the extra node dials.
		l, err := Listen(hs[1].Netns, hs[1].UnderlayIP+":7000")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		got := make(chan string, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				got <- err.Error()
				return
			}
			data, _ := io.ReadAll(c)
			c.Close()
			got <- string(data)
		}()
		c, err := Dial(x, hs[1].UnderlayIP+":7000", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, "MARKER-underlay")
		c.Close()
		if s := <-got; s != "MARKER-underlay" {
			t.Fatalf("got %q", s)
		}
		if _, err := Listen(hs[1].Netns, "10.32.0.2:7001"); err == nil {
			t.Fatalf("listening on an address the namespace lacks worked: wrong namespace?")
		}

		if err := cap.Stop(); err != nil {
			t.Logf("tcpdump exit: %v", err)
		}
		ps, err := cap.Packets()
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		for _, p := range ps {
			switch {
			case p.EtherType == 0x0806:
				kinds["arp"]++
			case p.Proto == 1:
				kinds["icmp"]++
			case p.Proto == 6 && (p.DPort == 7000 || p.SPort == 7000):
				kinds["tcp7000"]++
			default:
				kinds["other"]++
				t.Errorf("unexpected packet on the underlay: %v", p)
			}
		}
		t.Logf("captured %d packets: %v", len(ps), kinds)
		if kinds["icmp"] < 12 || kinds["tcp7000"] == 0 {
			t.Errorf("capture missed traffic: %v", kinds)
		}
		data, _ := cap.Bytes()
		if !strings.Contains(string(data), "MARKER-underlay") {
			t.Errorf("plaintext marker not in capture: capture is not working")
		}
		if n := netnsWithPrefix(prefix); len(n) != 5 {
			t.Errorf("namespaces %v, want ul, 3 hosts and x200", n)
		}
	})
	if left := netnsWithPrefix(prefix); len(left) != 0 {
		t.Fatalf("namespaces left after cleanup: %v", left)
	}
	if _, err := os.Stat(os.TempDir() + "/" + strings.TrimSuffix(prefix, "-")); err == nil {
		t.Fatalf("temp dir left")
	}
}

// TestSweep checks that only namespaces of dead owners are swept.
func TestSweep(t *testing.T) {
	needBed(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadName := fmt.Sprintf("wwg%d-abcd-x", dead.Process.Pid)
	liveName := fmt.Sprintf("wwg%d-abcd-x", os.Getppid())
	for _, n := range []string{deadName, liveName} {
		if _, err := run("ip", "netns", "add", n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { run("ip", "netns", "del", n) })
	}
	Sweep(t)
	if _, err := os.Stat(NetnsPath(deadName)); err == nil {
		t.Errorf("dead owner's namespace %s not swept", deadName)
	}
	if _, err := os.Stat(NetnsPath(liveName)); err != nil {
		t.Errorf("live owner's namespace %s swept", liveName)
	}
}

// TestPingFirstReply reads the output iputils ping printed here for a
// reply to the first request, for one to the fifth (the first four
// dropped by the far side's nftables), and for a first request answered
// late (held 4.9 s, as WireGuard holds packets until its handshake).
func TestPingFirstReply(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want time.Duration
	}{
		{"PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.045 ms\n\n--- 127.0.0.1 ping statistics ---\n1 packets transmitted, 1 received, 0% packet loss, time 0ms\n", 45 * time.Microsecond},
		{"PING 198.51.100.2 (198.51.100.2) 56(84) bytes of data.\n64 bytes from 198.51.100.2: icmp_seq=5 ttl=64 time=0.067 ms\n\n--- 198.51.100.2 ping statistics ---\n5 packets transmitted, 1 received, 80% packet loss, time 825ms\n", 800*time.Millisecond + 67*time.Microsecond},
		{"PING 10.44.0.1 (10.44.0.1) 56(84) bytes of data.\n64 bytes from 10.44.0.1: icmp_seq=1 ttl=64 time=4900 ms\n\n--- 10.44.0.1 ping statistics ---\n25 packets transmitted, 1 received, 96% packet loss, time 4805ms\n", 4900 * time.Millisecond},
	} {
		if d, ok := pingFirstReply(tc.out, 200*time.Millisecond); !ok || d != tc.want {
			t.Errorf("pingFirstReply = %v %v, want %v from:\n%s", d, ok, tc.want, tc.out)
		}
	}
	if _, ok := pingFirstReply("ping: connect: Network is unreachable\n", 200*time.Millisecond); ok {
		t.Error("pingFirstReply read a time from a ping without a reply")
	}
}
