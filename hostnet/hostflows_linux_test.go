package hostnet

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/internal/netnstest"
)

// TestHostFlowsWithoutConntrack: weavewg's table turns conntrack on for
// nothing (no `ct` expression), so a container's packets through the host
// leave no conntrack entry; the host's own ping, TCP connection and UDP
// exchange with a container still get their replies; and the hidden host
// answers none of the container's pings, connections or datagrams, nor a
// SYN from the port it just talked to.
func TestHostFlowsWithoutConntrack(t *testing.T) {
	h := oneHost(t)
	h.cfg.Overlay = netipPrefix("10.32.0.0/12")
	h.start(t)
	c1 := newNetns(t, "c1")
	if _, err := h.host.Attach(AttachSpec{Netns: c1.Path, IP: netipPrefix("10.32.1.1/12")}); err != nil {
		t.Fatal(err)
	}
	// A remote peer's range, routed into the TUN (which nobody reads: the
	// packets are forwarded, and conntrack would have seen them, before
	// they are lost there).
	if err := h.host.SetRoutes([]netip.Prefix{netipPrefix("10.40.0.0/13")}); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "ruleset"); strings.Contains(out, "ct ") {
		t.Errorf("the ruleset uses conntrack:\n%s", out)
	}
	ping := func(ns, to string) error {
		return exec.Command("ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-n", "-q", to).Run()
	}
	_ = ping(c1.Name, "10.40.0.5") // no answer: nobody reads the TUN
	if out := run(t, "ip", "netns", "exec", h.ns.Name, "cat", "/proc/net/nf_conntrack"); strings.Contains(out, "dst=10.40.0.5") {
		t.Errorf("the container's ping through the host is in conntrack:\n%s", out)
	}

	// The host's own flows into the overlay.
	if err := ping(h.ns.Name, "10.32.1.1"); err != nil {
		t.Errorf("the host's own ping to its container: %v", err)
	}
	tcpLn, udpConn := serveHello(t, c1)
	got, hostPort, err := tcpHello(h.ns, tcpLn.Addr().String())
	if err != nil || got != "hello" {
		t.Errorf("the host's own TCP connection to its container: %q %v", got, err)
	}
	if got, err := udpHello(h.ns, udpConn.LocalAddr().String()); err != nil || got != "hello" {
		t.Errorf("the host's own UDP exchange with its container: %q %v", got, err)
	}

	// The hidden host, from the container.
	if err := ping(c1.Name, "10.32.0.1"); err == nil {
		t.Error("the hidden host answered its container's ping")
	}
	hostLn, hostUDP := serveHello(t, h.ns)
	if got, _, err := tcpHello(c1, hostLn.Addr().String()); err == nil {
		t.Errorf("the container connected to the hidden host: %q", got)
	}
	if got, err := udpHello(c1, hostUDP.LocalAddr().String()); err == nil {
		t.Errorf("the hidden host answered the container's datagram: %q", got)
	}
	// The host's TCP flow is still in host_flows; a SYN from the
	// container's end of it is not a reply: dropped, where a host that
	// let it in would answer it (nothing listens there: "refused").
	tcpLn.Close() // its port is free (the host closed first: the TIME_WAIT is the host's)
	var synErr error
	if err := netnstest.Do(c1, func() {
		d := net.Dialer{Timeout: time.Second, LocalAddr: tcpLn.Addr()}
		var c net.Conn
		if c, synErr = d.Dial("tcp4", net.JoinHostPort("10.32.0.1", hostPort)); synErr == nil {
			c.Close()
		}
	}); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	if !errors.As(synErr, &ne) || !ne.Timeout() {
		t.Errorf("a SYN from the container's end of the host's flow: %v, want no answer (a timeout)", synErr)
	}
}

// serveHello serves "hello" on TCP and UDP on an ephemeral port of ns's
// every address, until the test ends.
func serveHello(t *testing.T, ns *netnstest.NS) (net.Listener, net.PacketConn) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	var err error
	if nerr := netnstest.Do(ns, func() {
		if ln, err = net.Listen("tcp4", "0.0.0.0:0"); err != nil {
			return
		}
		pc, err = net.ListenPacket("udp4", "0.0.0.0:0")
	}); nerr != nil || err != nil {
		t.Fatal(nerr, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// The client closes first, so the TIME_WAIT is its, and
			// this end's port is free again once the listener closes.
			c.SetDeadline(time.Now().Add(3 * time.Second))
			c.Write([]byte("hello"))
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 100)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte("hello"), from)
		}
	}()
	// The listeners are on 0.0.0.0: name the container's or host's
	// overlay address in what the caller dials.
	return addrListener{ln, ns}, addrPacketConn{pc, ns}
}

// overlayAddr is the overlay address the tests dial in ns.
func overlayAddr(ns *netnstest.NS) string {
	if strings.HasSuffix(ns.Name, "-c1") {
		return "10.32.1.1"
	}
	return "10.32.0.1"
}

type addrListener struct {
	net.Listener
	ns *netnstest.NS
}

func (l addrListener) Addr() net.Addr {
	a := l.Listener.Addr().(*net.TCPAddr)
	return &net.TCPAddr{IP: net.ParseIP(overlayAddr(l.ns)), Port: a.Port}
}

type addrPacketConn struct {
	net.PacketConn
	ns *netnstest.NS
}

func (c addrPacketConn) LocalAddr() net.Addr {
	a := c.PacketConn.LocalAddr().(*net.UDPAddr)
	return &net.UDPAddr{IP: net.ParseIP(overlayAddr(c.ns)), Port: a.Port}
}

// tcpHello connects from ns to addr and reads what it says; port is the
// connection's local port.
func tcpHello(ns *netnstest.NS, addr string) (got, port string, err error) {
	if nerr := netnstest.Do(ns, func() {
		var c net.Conn
		if c, err = net.DialTimeout("tcp4", addr, 2*time.Second); err != nil {
			return
		}
		defer c.Close()
		_, port, _ = net.SplitHostPort(c.LocalAddr().String())
		c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 100)
		n, rerr := c.Read(buf)
		got, err = string(buf[:n]), rerr
	}); nerr != nil {
		return "", "", nerr
	}
	return got, port, err
}

// udpHello sends a datagram from ns to addr and reads the answer.
func udpHello(ns *netnstest.NS, addr string) (got string, err error) {
	if nerr := netnstest.Do(ns, func() {
		var c net.Conn
		if c, err = net.Dial("udp4", addr); err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err = c.Write([]byte("hi")); err != nil {
			return
		}
		buf := make([]byte, 100)
		n, rerr := c.Read(buf)
		got, err = string(buf[:n]), rerr
	}); nerr != nil {
		return "", nerr
	}
	return got, err
}

// TestHostFlowsForgetClosedConnections: a TCP flow of the host's that has
// closed, whichever end closed first, stays in host_flows no longer than
// conntrack keeps a closing connection (2 minutes), not the 5 days of an
// open one: a host that opens many short connections into the overlay
// (kubelet's probes of its pods, a scraper) would otherwise fill the set,
// and then no new flow of the host's gets its replies.
func TestHostFlowsForgetClosedConnections(t *testing.T) {
	h := oneHost(t)
	h.cfg.Overlay = netipPrefix("10.32.0.0/12")
	h.start(t)
	c1 := newNetns(t, "c1")
	if _, err := h.host.Attach(AttachSpec{Netns: c1.Path, IP: netipPrefix("10.32.1.1/12")}); err != nil {
		t.Fatal(err)
	}
	// The container's server closes once the host has closed (serveHello):
	// the host closes first.
	tcpLn, _ := serveHello(t, c1)
	got, hostFirst, err := tcpHello(h.ns, tcpLn.Addr().String())
	if err != nil || got != "hello" {
		t.Fatalf("the host's own TCP connection to its container: %q %v", got, err)
	}
	// The container closes first (a server that says bye and hangs up),
	// or resets the connection (linger 0).
	hangUp := func(reset bool) string {
		var ln net.Listener
		var err error
		if nerr := netnstest.Do(c1, func() { ln, err = net.Listen("tcp4", "0.0.0.0:0") }); nerr != nil || err != nil {
			t.Fatal(nerr, err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Read(make([]byte, 1)) // the connection is up on both ends
			c.Write([]byte("bye"))
			if reset {
				c.(*net.TCPConn).SetLinger(0)
			}
			c.Close()
		}()
		var port string
		if nerr := netnstest.Do(h.ns, func() {
			var c net.Conn
			if c, err = net.DialTimeout("tcp4", net.JoinHostPort("10.32.1.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), 2*time.Second); err != nil {
				return
			}
			_, port, _ = net.SplitHostPort(c.LocalAddr().String())
			c.Write([]byte("x"))
			io.ReadAll(c) // until the container's FIN or RST
			c.Close()
		}); nerr != nil || err != nil {
			t.Fatalf("the host's connection to a container that hangs up (reset %v): %v %v", reset, nerr, err)
		}
		return port
	}
	serverFirst, serverReset := hangUp(false), hangUp(true)
	time.Sleep(200 * time.Millisecond) // the last ACKs
	out := run(t, "ip", "netns", "exec", h.ns.Name, "nft", "list", "set", "inet", "weavewg_weavewg0", hostFlowsSet)
	for _, tc := range []struct{ who, port string }{{"the host closed first", hostFirst},
		{"the container closed first", serverFirst}, {"the container reset it", serverReset}} {
		left, ok := flowExpiry(out, "tcp", tc.port)
		if !ok {
			continue // gone already: forgotten
		}
		if left > tcpOpeningTimeout {
			t.Errorf("a closed connection (%s, host port %s) stays in host_flows for %v more, want at most %v:\n%s",
				tc.who, tc.port, left, tcpOpeningTimeout, out)
		}
	}
}

// flowExpiry finds the element of `nft list set` output whose protocol is
// proto and whose last part (the host's port) is port, and returns how long
// it has left.
func flowExpiry(out, proto, port string) (time.Duration, bool) {
	for _, el := range strings.Split(out, ",") {
		f := strings.Fields(el)
		for i := 0; i+6 < len(f); i++ {
			if f[i+1] == "." && f[i+2] == proto && f[i+5] == "." && strings.TrimSuffix(f[i+6], "}") == port {
				for j := i + 7; j+1 < len(f); j++ {
					if f[j] == "expires" {
						if d, err := time.ParseDuration(nftDuration(f[j+1])); err == nil {
							return d, true
						}
					}
				}
			}
		}
	}
	return 0, false
}

// nftDuration turns nft's "4d23h59m58s" (days, and milliseconds as "ms")
// into what time.ParseDuration reads.
func nftDuration(s string) string {
	s = strings.TrimRight(s, ",}")
	if d, rest, ok := strings.Cut(s, "d"); ok && !strings.HasSuffix(d, "m") {
		if n, err := strconv.Atoi(d); err == nil {
			return strconv.Itoa(24*n) + "h" + rest
		}
	}
	return s
}

// TestOverlayInputAfterBridgeRemade: a bridge deleted and made again under
// the same name behind the daemon's back (a new interface index) still
// leads into overlay_in, so the hidden host stays hidden from a container
// on it: the jumps name the devices, where a stale index would match
// nothing and let everything in.
func TestOverlayInputAfterBridgeRemade(t *testing.T) {
	h := oneHost(t)
	h.cfg.Overlay = netipPrefix("10.32.0.0/12")
	h.start(t)
	c1 := newNetns(t, "c1")
	att, err := h.host.Attach(AttachSpec{Netns: c1.Path, IP: netipPrefix("10.32.1.1/12")})
	if err != nil {
		t.Fatal(err)
	}
	hostLn, _ := serveHello(t, h.ns)
	if got, _, err := tcpHello(c1, hostLn.Addr().String()); err == nil {
		t.Fatalf("the container connected to the hidden host before the bridge was remade: %q", got)
	}
	bridge := h.cfg.Bridge
	if bridge == "" {
		bridge = "weavewg"
	}
	for _, args := range [][]string{
		{"link", "del", bridge},
		{"link", "add", bridge, "type", "bridge"},
		{"addr", "add", "10.32.0.1/12", "dev", bridge},
		{"link", "set", bridge, "up"},
		{"link", "set", att.HostVeth, "master", bridge},
	} {
		run(t, append([]string{"ip", "-n", h.ns.Name}, args...)...)
	}
	// The new bridge carries: the host's own ping gets its reply.
	if out, err := exec.Command("ip", "netns", "exec", h.ns.Name, "ping", "-c", "1", "-W", "2", "10.32.1.1").CombinedOutput(); err != nil {
		t.Fatalf("the host's ping to its container through the remade bridge: %v\n%s", err, out)
	}
	// The hidden host answers no ping of the container's ...
	if out, err := exec.Command("ip", "netns", "exec", c1.Name, "ping", "-c", "1", "-W", "2", "10.32.0.1").CombinedOutput(); err == nil {
		t.Errorf("the hidden host answered a ping through the remade bridge:\n%s", out)
	}
	// ... and its services stay closed to it.
	if got, _, err := tcpHello(c1, hostLn.Addr().String()); err == nil {
		t.Errorf("the container connected to the hidden host through the remade bridge: %q", got)
	}
}
