package tunnel

import (
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// TestInitiationToKernelPeerNotSent: beside kernel WireGuard, an
// initiation of wireguard-go's straight to an endpoint the steering sets
// give the kernel socket is not sent (counted), nor are copies of one
// pending from before the peer moved there: its answer would go to the
// kernel socket, and it would keep the peer's kernel from handshaking
// with ours. Initiations through a relay, responses, data, and
// initiations to other endpoints go out as before; with no kernel
// endpoints everything does.
func TestInitiationToKernelPeerNotSent(t *testing.T) {
	f := newRelayFixture(t)
	var clk hsClock
	clk.at(f, 0)
	a, _ := f.bind.ParseEndpoint("192.0.2.1:6783") // peer a, direct
	b, _ := f.bind.ParseEndpoint("192.0.2.2:6783") // peer b, direct
	relayedC := newRelayEndpoint(PeerIDOf(f.c))    // c, relayed through b
	sent := func(msg []byte, ep conn.Endpoint) bool {
		t.Helper()
		before := f.inner.sends
		if err := f.bind.Send([][]byte{msg}, ep); err != nil {
			t.Fatal(err)
		}
		return f.inner.sends > before
	}
	dropped := func() uint64 { return f.bind.Counters()[CounterHandshakeToKernelDropped] }

	// An initiation to a is pending when a moves to the kernel device.
	if !sent(wgInitiation(1), a) {
		t.Fatal("initiation to a not sent with no kernel device")
	}
	f.bind.setKernelEndpoints([]netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:6783"),
		netip.MustParseAddrPort("[::ffff:192.0.2.3]:6783")}) // as a mapped address: c's (c is relayed)
	clk.at(f, 600*time.Millisecond)
	f.inner.sends = 0
	f.bind.retransmitHandshakes()
	if f.inner.sends != 0 || dropped() != 1 {
		t.Errorf("copy of the pending initiation to a: %d sent, %d dropped; want 0 and 1", f.inner.sends, dropped())
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		to   conn.Endpoint
		want bool
	}{
		{"initiation to a, on the kernel device", wgInitiation(2), a, false},
		{"response to a", wgResponse(3, 77), a, true},
		{"data to a", wgTransport(64), a, true},
		{"initiation to b, not on it", wgInitiation(4), b, true},
		{"initiation to c through its relay", wgInitiation(5), relayedC, true},
	} {
		if got := sent(tc.msg, tc.to); got != tc.want {
			t.Errorf("%s: sent %v; want %v", tc.name, got, tc.want)
		}
	}
	if dropped() != 2 {
		t.Errorf("%s = %d; want 2", CounterHandshakeToKernelDropped, dropped())
	}
	f.bind.setKernelEndpoints(nil)
	if !sent(wgInitiation(6), a) {
		t.Error("initiation to a not sent after the kernel device let it go")
	}
}
