package integration

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
)

// TestAttachEgress: a namespace attached with --egress and no other
// interface gets a default route through its host and reaches a server
// on the host's underlay LAN (the bed's stand-in for the outside), which
// sees the host's own underlay address (masquerade); a plain container
// that adds a default route by hand gets nowhere; both hold after a
// restart of the daemon.
func TestAttachEgress(t *testing.T) {
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	h1 := b.AddHost(testbed.HostOptions{})
	b.WaitMesh(30*time.Second, h1)
	e, err := h1.AddContainerOpts("out", "", true)
	if err != nil {
		t.Fatal(err)
	}
	plain := h1.AddContainer()
	if out, err := plain.Exec("ip", "route", "add", "default", "dev", "ethwe0"); err != nil {
		t.Fatalf("plain container: default route by hand: %v %s", err, out)
	}
	hostIP := strings.Split(h1.HostIP, "/")[0]
	if out, _ := e.Exec("ip", "route", "show", "default"); !strings.Contains(out, "default via "+hostIP) {
		t.Fatalf("egress container's default route: %q, want via %s", out, hostIP)
	}
	x := b.AddNode(150)
	// The server could answer the overlay's own addresses (through h1): only
	// h1's filter keeps the plain container from the outside.
	b.MustIP(x, "route", "add", "10.32.0.0/12", "via", h1.UnderlayIP)
	ln, err := testbed.Listen(x, "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(conn, conn.RemoteAddr().(*net.TCPAddr).IP.String())
			conn.Close()
		}
	}()
	seenFrom := func(c *testbed.Container) (string, error) {
		conn, err := testbed.Dial(c.Netns, testbed.UnderlayNet+"150:8080", 2*time.Second)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(conn)
		return string(b), err
	}
	check := func(phase string) {
		t.Helper()
		from, err := seenFrom(e)
		if err != nil || from != h1.UnderlayIP {
			t.Errorf("%s: the egress container reached the outside as %q (%v), want h1's own address %s", phase, from, err, h1.UnderlayIP)
		}
		if from, err := seenFrom(plain); err == nil {
			t.Errorf("%s: a container without --egress reached the outside (as %s) by a route of its own", phase, from)
		}
	}
	check("after attach")
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	h1.Launch()
	b.WaitMesh(30*time.Second, h1)
	testbed.Eventually(t, 10*time.Second, "egress after a restart", func() error { _, err := seenFrom(e); return err })
	check("after a restart")
	// The egress container still reaches the overlay.
	if err := plain.PingEventually(e.Addr, 10*time.Second); err != nil {
		t.Error(err)
	}
}
