package tunnel

import (
	"errors"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
)

// Peers on the kernel device.
//
// Beside kernel WireGuard (daemon/kernel.go, kernelwg), a direct peer's
// WireGuard datagrams reach the kernel socket, not ours: the port-sharing
// sets steer those from the endpoints of the kernel device's peers there.
// An initiation wireguard-go sends straight to such an endpoint is
// answered from it, so the answer goes to the kernel socket, which never
// sent it: that handshake cannot complete. And it does harm. The peer's
// kernel consumes it, replacing the handshake state of its own initiation,
// and answers it; and every answer holds back the peer's own initiations
// for 5 s (the kernel starts none within RekeyTimeout of its last
// handshake message). wireguard-go tries for 90 s when it had data for the
// peer before the peer moved to the kernel device, every 5 s and with the
// Bind's copies in between, so for 90 s the pair made no session at all:
// the VM test's h1 pinged h3 for 60 s with no answer, h1's kernel having
// sent one initiation and answered four of h3's wireguard-go's. So the
// Bind drops wireguard-go's initiations to those endpoints (counted); the
// kernel devices handshake with each other.

// errToKernelPeer: a copy of an initiation not sent (answeredToKernel).
var errToKernelPeer = errors.New("handshake initiation to a peer on the kernel device: its answer would reach the kernel socket")

// SetKernelEndpoints sets the endpoints the host's kernel WireGuard socket
// receives WireGuard datagrams from (the steering sets), replacing the
// last; nil or empty: none (no kernel device).
func (t *Tunnel) SetKernelEndpoints(eps []netip.AddrPort) { t.bind.setKernelEndpoints(eps) }

func (b *Bind) setKernelEndpoints(eps []netip.AddrPort) {
	if len(eps) == 0 {
		b.kernelEPs.Store(nil)
		return
	}
	m := make(map[netip.AddrPort]struct{}, len(eps))
	for _, ep := range eps {
		m[netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())] = struct{}{}
	}
	b.kernelEPs.Store(&m)
}

// answeredToKernel reports whether a handshake initiation sent to ep
// would be answered to the kernel socket: ep is a direct endpoint in the
// steering sets. Relayed initiations are answered through the relay, to
// us.
func (b *Bind) answeredToKernel(ep conn.Endpoint) bool {
	m := b.kernelEPs.Load()
	if m == nil || ep == nil {
		return false
	}
	if _, ok := ep.(*RelayEndpoint); ok {
		return false
	}
	a := endpointAddr(ep)
	_, ok := (*m)[netip.AddrPortFrom(a.Addr().Unmap(), a.Port())]
	return ok
}
