package sim

import (
	"context"
	"net/netip"
	"testing"
)

// A connection is forgotten once both its ends closed, and an end that
// closes drops what it had not read: the network held every connection
// ever made, with its unread bytes, for the whole run.
func TestNetworkForgetsClosedConnections(t *testing.T) {
	n := NewNetwork()
	a, b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	ln, err := n.Host(b).Listen(netip.AddrPortFrom(b, ControlPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pipes := func() int {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.pipes)
	}
	for range 3 {
		accepted := make(chan error, 1)
		var server *memConn
		go func() {
			c, err := ln.Accept()
			if err == nil {
				server = c.(*memConn)
			}
			accepted <- err
		}()
		client, err := n.Host(a).DialContext(context.Background(), netip.AddrPortFrom(b, ControlPort).String())
		if err != nil {
			t.Fatal(err)
		}
		if err := <-accepted; err != nil {
			t.Fatal(err)
		}
		if _, err := client.Write(make([]byte, 1<<16)); err != nil {
			t.Fatal(err)
		}
		if got := pipes(); got != 1 {
			t.Fatalf("%d connections known with one open", got)
		}
		server.Close()
		if server.rd.buf != nil {
			t.Fatal("a closed end kept what it had not read")
		}
		if got := pipes(); got != 1 {
			t.Fatalf("%d connections known with one end still open, want 1", got)
		}
		client.Close()
		if got := pipes(); got != 0 {
			t.Fatalf("%d connections known after both ends closed", got)
		}
	}
}
