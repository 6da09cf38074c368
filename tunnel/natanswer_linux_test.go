package tunnel

import (
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/weavewg/weavewg/internal/netnstest"
)

// TestICMPSocketTakesOnlyUnreachable: the Tunnel's raw ICMP socket is
// given the port unreachable a UDP datagram to a closed port brings back,
// and not the echo requests and replies of a ping to the host, which
// without the filter woke the daemon once per ICMP message the host got.
func TestICMPSocketTakesOnlyUnreachable(t *testing.T) {
	requireNetAdmin(t)
	ns := netnstest.New(t, "icmp")
	var (
		c   net.PacketConn
		err error
	)
	if nerr := inNetns(ns, func() { c, err = listenICMPUnreachable() }); nerr != nil {
		t.Fatal(nerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Echo requests and replies, all delivered to the namespace.
	if out, err := exec.Command("ip", "netns", "exec", ns.Name, "ping", "-c", "3", "-i", "0.2", "-W", "2", "127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("ping: %v: %s", err, out)
	}
	// Then a datagram to a port nobody listens on: port unreachable.
	var serr error
	if nerr := inNetns(ns, func() {
		u, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40001}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40002})
		if err != nil {
			serr = err
			return
		}
		defer u.Close()
		_, serr = u.Write([]byte("x"))
	}); nerr != nil {
		t.Fatal(nerr)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a failure's bound, not a threshold
	buf := make([]byte, 1500)
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no ICMP read: %v", err)
	}
	if buf[0] != icmpDestUnreachable {
		t.Fatalf("first ICMP message read is type %d, want only destination unreachable (%d): the echo messages of a ping reach the socket", buf[0], icmpDestUnreachable)
	}
	if dst, ok := icmpUnreachable(buf[:n], 40001); !ok || dst.Port() != 40002 {
		t.Errorf("port unreachable read as %v %v, want the datagram to port 40002", dst, ok)
	}
}
