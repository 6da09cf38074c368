package hostnet

import (
	"encoding/binary"
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
	"golang.org/x/sys/unix"
)

// TestHostFlowsWithoutConntrack: weavewg's table turns conntrack on for
// nothing (no `ct` expression), so a container's packets through the host
// leave no conntrack entry; the host's own ping, TCP connection and UDP
// exchange with a container still get their replies; and the hidden host
// answers none of the container's pings, connections or datagrams, nor a
// SYN from the port it just talked to.
func TestHostFlowsWithoutConntrack(t *testing.T) {
	h, c1, _ := hiddenHostWithContainer(t)
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
	h, c1, _ := hiddenHostWithContainer(t)
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
	h, c1, att := hiddenHostWithContainer(t)
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

// TestHostFlowsFragmentedReplies: a reply to the host's own flow that is
// larger than the overlay's MTU (a big DNS answer from a container's
// resolver, any UDP application's, a large ping's) arrives in fragments,
// and nftables' transport matches fail on all but the first of them. The
// host still gets the whole reply, with conntrack off (nothing reassembles
// before prerouting) and with another program's `ct` rule on (which
// reassembles there): IPv4 reassembles what is for the host itself before
// the input hook, where overlay_in is.
func TestHostFlowsFragmentedReplies(t *testing.T) {
	h, c1, _ := hiddenHostWithContainer(t)
	const size = 4000 // about three fragments at the bridge's 1420
	var pc net.PacketConn
	var err error
	if nerr := netnstest.Do(c1, func() { pc, err = net.ListenPacket("udp4", "0.0.0.0:0") }); nerr != nil || err != nil {
		t.Fatal(nerr, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 100)
		big := make([]byte, size)
		for i := range big {
			big[i] = byte(i)
		}
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(big, from)
		}
	}()
	addr := net.JoinHostPort("10.32.1.1", strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port))
	check := func(when string) {
		t.Helper()
		reasm := reassembled(t, h.ns)
		var n int
		if nerr := netnstest.Do(h.ns, func() {
			var c net.Conn
			if c, err = net.Dial("udp4", addr); err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 2*size)
			// A few tries: a datagram may be lost for reasons of
			// its own; a filter that drops fragments loses them all.
			for try := 0; try < 3; try++ {
				c.SetDeadline(time.Now().Add(time.Second))
				if _, err = c.Write([]byte("hi")); err != nil {
					return
				}
				if n, err = c.Read(buf); err == nil {
					return
				}
			}
		}); nerr != nil {
			t.Fatal(nerr)
		}
		if err != nil || n != size {
			t.Errorf("%s: the host's UDP request to its container got %d bytes of a %d-byte reply: %v", when, n, size, err)
		}
		if out, err := exec.Command("ip", "netns", "exec", h.ns.Name, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-n", "-q",
			"-s", strconv.Itoa(size), "10.32.1.1").CombinedOutput(); err != nil {
			t.Errorf("%s: the host's %d-byte ping to its container: %v\n%s", when, size, err, out)
		}
		if reassembled(t, h.ns) == reasm {
			t.Errorf("%s: the host reassembled nothing: the replies were not fragmented, the test tests nothing", when)
		}
	}
	check("conntrack off")
	// Another program's rule that reads conntrack (Docker's, ufw's):
	// conntrack and its reassembly at prerouting are on.
	run(t, "ip", "netns", "exec", h.ns.Name, "nft", "add table ip other; add chain ip other in { type filter hook input priority 0; policy accept; }; add rule ip other in ct state established counter accept")
	check("another program's ct rule")
}

// reassembled is the count of datagrams ns's IPv4 has reassembled
// (ReasmOKs of /proc/net/snmp).
func reassembled(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	lines := strings.Split(run(t, "ip", "netns", "exec", ns.Name, "cat", "/proc/net/snmp"), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "Ip:" || len(values) != len(names) {
			continue
		}
		for j, n := range names {
			if n == "ReasmOKs" {
				return values[j]
			}
		}
	}
	t.Fatal("no Ip: ReasmOKs in /proc/net/snmp")
	return ""
}

// TestHostICMPErrorsQuoteFlows: the ICMP errors the overlay sends the host
// get in when they are about the host's own flows into the overlay (a
// container's port unreachable for the host's datagram) or about what the
// overlay may reach of the host (its DNS port), and not when they quote a
// flow of the host's outside the overlay: a container could otherwise
// make the host abort its connections or lower its path MTU towards any
// underlay address (a peer's tunnel) with forged errors.
func TestHostICMPErrorsQuoteFlows(t *testing.T) {
	h, c1, _ := hiddenHostWithContainer(t)
	// An underlay of the host's: a flow there is none of the overlay's.
	run(t, "ip", "-n", h.ns.Name, "link", "add", "under0", "type", "veth", "peer", "name", "under1")
	run(t, "ip", "-n", h.ns.Name, "link", "set", "under1", "up")
	run(t, "ip", "-n", h.ns.Name, "addr", "add", "192.168.77.1/24", "dev", "under0")
	run(t, "ip", "-n", h.ns.Name, "link", "set", "under0", "up")

	// refused dials a UDP socket in the host (from local, if given) to
	// addr, sends a datagram if send, and after wait tells whether the
	// socket was told "connection refused" (a port unreachable got in).
	type sock struct {
		c  *net.UDPConn
		lp int
	}
	dial := func(local, addr string) sock {
		t.Helper()
		var c *net.UDPConn
		var err error
		if nerr := netnstest.Do(h.ns, func() {
			var la *net.UDPAddr
			if local != "" {
				la = net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local))
			}
			c, err = net.DialUDP("udp4", la, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		}); nerr != nil || err != nil {
			t.Fatal(nerr, err)
		}
		t.Cleanup(func() { c.Close() })
		return sock{c, c.LocalAddr().(*net.UDPAddr).Port}
	}
	refused := func(s sock) bool {
		t.Helper()
		s.c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := s.c.Read(make([]byte, 10))
		return err != nil && strings.Contains(err.Error(), "connection refused")
	}

	// The host's datagram to a container's closed port: the container's
	// kernel answers port unreachable, about a flow in host_flows.
	s := dial("", "10.32.1.1:9")
	s.c.Write([]byte("hi"))
	if !refused(s) {
		t.Error("the container's port unreachable for the host's datagram did not get in")
	}
	// The same from the host's DNS port (its server answers every
	// container; such flows are not in host_flows).
	s = dial("10.32.0.1:53", "10.32.1.1:9")
	s.c.Write([]byte("hi"))
	if !refused(s) {
		t.Error("the container's port unreachable for the host's DNS answer did not get in")
	}

	// Forged by the container: errors about the host's flow on its
	// underlay, which the overlay never carried.
	under := dial("", "192.168.77.2:9999")
	forge := func(typ, code byte, mtu uint16, from, to netip.AddrPort) {
		t.Helper()
		msg := make([]byte, 8+20+8)
		msg[0], msg[1] = typ, code
		binary.BigEndian.PutUint16(msg[6:], mtu)
		ip := msg[8:]
		ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
		binary.BigEndian.PutUint16(ip[2:], 20+8+2)
		copy(ip[12:], from.Addr().AsSlice())
		copy(ip[16:], to.Addr().AsSlice())
		binary.BigEndian.PutUint16(ip[20:], from.Port())
		binary.BigEndian.PutUint16(ip[22:], to.Port())
		binary.BigEndian.PutUint16(ip[24:], 8+2)
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		var err error
		if nerr := netnstest.Do(c1, func() {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
				return
			}
			defer pc.Close()
			_, err = pc.WriteTo(msg, &net.IPAddr{IP: net.ParseIP("10.32.0.1")})
		}); nerr != nil || err != nil {
			t.Fatal(nerr, err)
		}
	}
	hostEnd := netip.AddrPortFrom(netip.MustParseAddr("192.168.77.1"), uint16(under.lp))
	farEnd := netip.MustParseAddrPort("192.168.77.2:9999")
	forge(3, 3, 0, hostEnd, farEnd) // port unreachable
	if refused(under) {
		t.Error("a container's forged port unreachable about the host's underlay flow got in")
	}
	forge(3, 4, 600, hostEnd, farEnd) // fragmentation needed, MTU 600
	time.Sleep(100 * time.Millisecond)
	if out := run(t, "ip", "-n", h.ns.Name, "route", "get", "192.168.77.2"); strings.Contains(out, "mtu 600") {
		t.Errorf("a container's forged fragmentation needed lowered the host's path MTU on its underlay:\n%s", out)
	}
	// The check can see an error get in: the same forged error about the
	// host's flow into the overlay does.
	inside := dial("", "10.32.1.1:9999")
	inside.c.Write([]byte("hi"))
	forge(3, 4, 600, netip.AddrPortFrom(netip.MustParseAddr("10.32.0.1"), uint16(inside.lp)), netip.MustParseAddrPort("10.32.1.1:9999"))
	time.Sleep(100 * time.Millisecond)
	if out := run(t, "ip", "-n", h.ns.Name, "route", "get", "10.32.1.1"); !strings.Contains(out, "mtu 600") {
		t.Errorf("fragmentation needed about the host's flow into the overlay did not lower the path MTU:\n%s", out)
	}
}

// icmpChecksum is the Internet checksum of msg (its checksum field zero).
func icmpChecksum(msg []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(msg); i += 2 {
		sum += uint32(msg[i])<<8 | uint32(msg[i+1])
	}
	if len(msg)%2 == 1 {
		sum += uint32(msg[len(msg)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// TestHiddenHostOverIPv6: the hidden host answers no echo request of a
// container's at its bridge's link-local address either, while neighbour
// discovery still works both ways: the host's own ping to the container's
// link-local address is answered.
func TestHiddenHostOverIPv6(t *testing.T) {
	h, c1, att := hiddenHostWithContainer(t)
	linkLocal := func(ns *netnstest.NS, dev string) string {
		t.Helper()
		// Until duplicate address detection is done the address is
		// tentative and answers nothing.
		for try := 0; try < 50; try++ {
			out := run(t, "ip", "-n", ns.Name, "-6", "-o", "addr", "show", "dev", dev, "scope", "link")
			f := strings.Fields(out)
			if len(f) > 3 && f[2] == "inet6" && !strings.Contains(out, "tentative") {
				return strings.Split(f[3], "/")[0]
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Skipf("no link-local IPv6 address on %s in %s (IPv6 off?)", dev, ns.Name)
		return ""
	}
	bridge := h.cfg.Bridge
	hostLL, ctrLL := linkLocal(h.ns, bridge), linkLocal(c1, att.IfName)
	ping6 := func(ns, to string) ([]byte, error) {
		return exec.Command("ip", "netns", "exec", ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-n", "-q", to).CombinedOutput()
	}
	if out, err := ping6(c1.Name, hostLL+"%"+att.IfName); err == nil {
		t.Errorf("the hidden host answered its container's ping at its link-local address:\n%s", out)
	}
	if out, err := ping6(h.ns.Name, ctrLL+"%"+bridge); err != nil {
		t.Errorf("the host's own ping to its container's link-local address: %v\n%s", err, out)
	}
}
