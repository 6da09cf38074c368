package nat

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

func TestPacketConn(t *testing.T) {
	now := time.Unix(100, 0)
	var sent []netip.AddrPort
	ctr := &counters{}
	c := newPacketConn(func(_ []byte, dst netip.AddrPort) error { sent = append(sent, dst); return nil }, 6783, func() time.Time { return now }, ctr)
	if c.LocalAddr().String() != "0.0.0.0:6783" {
		t.Fatalf("local %v", c.LocalAddr())
	}
	src := netip.MustParseAddrPort("192.0.2.5:1234")
	pkt := []byte("hello")
	c.deliver(pkt, src)
	pkt[0] = 'j' // deliver copied it
	buf := make([]byte, 100)
	n, from, err := c.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello" || from.String() != src.String() {
		t.Fatalf("read %q from %v: %v", buf[:n], from, err)
	}
	// Deadlines.
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := c.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	// A full queue drops the oldest.
	for i := range connQueueLen + 3 {
		c.deliver([]byte{byte(i)}, src)
	}
	if n, _, _ := c.ReadFrom(buf); n != 1 || buf[0] != 3 {
		t.Fatalf("oldest kept: %d", buf[0])
	}
	if ctr.c[cSTUNQueueDropped].Load() != 3 {
		t.Fatalf("dropped %d", ctr.c[cSTUNQueueDropped].Load())
	}
	// Requests written are remembered, others not.
	req, _ := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername("a:b"), stun.NewShortTermIntegrity("p"), stun.Fingerprint)
	dst := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 6783}
	if _, err := c.WriteTo(req.Raw, dst); err != nil {
		t.Fatal(err)
	}
	c.WriteTo([]byte("not stun"), dst)
	if len(sent) != 2 || sent[0] != netip.MustParseAddrPort("192.0.2.9:6783") {
		t.Fatalf("sent %v", sent)
	}
	tx, ok := c.lookup(req.TransactionID)
	if !ok || tx.dst != sent[0] || tx.username != "a:b" {
		t.Fatalf("lookup %+v %v", tx, ok)
	}
	now = now.Add(txnTTL)
	if _, ok := c.lookup(req.TransactionID); ok {
		t.Fatal("expired transaction found")
	}
	// Close ends reads and writes.
	c.Close()
	if _, _, err := c.ReadFrom(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := c.WriteTo(req.Raw, dst); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

func TestPacketConnEvicts(t *testing.T) {
	now := time.Unix(0, 0)
	c := newPacketConn(func([]byte, netip.AddrPort) error { return nil }, 1, func() time.Time { return now }, nil)
	for i := range maxTxns + 10 {
		var id [12]byte
		id[0], id[1] = byte(i), byte(i>>8)
		c.remember(id, txn{at: now})
	}
	if len(c.txns) != maxTxns || len(c.txOrder) != maxTxns {
		t.Fatalf("%d txns, %d in order", len(c.txns), len(c.txOrder))
	}
}
