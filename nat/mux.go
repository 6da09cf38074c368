package nat

import (
	"net"
	"net/netip"
	"time"

	"github.com/pion/ice/v4"
)

// udpMux is the UDP mux every ICE agent of a Manager shares: pion's
// UniversalUDPMuxDefault (demultiplexing by ufrag and remote address, and
// server-reflexive lookups against STUN servers) over a packetConn, with
// the listen addresses (the host candidates) chosen by us. pion would list
// every interface address, the overlay's TUN and bridge included, and a
// host candidate on the overlay would carry WireGuard inside WireGuard.
type udpMux struct {
	*ice.UniversalUDPMuxDefault
	port  int
	addrs func() []netip.Addr
}

var _ ice.UniversalUDPMux = (*udpMux)(nil)

// xorMappedTTL is how long a server-reflexive address is reused. Short,
// because a NAT that forgot us maps us anew and a stale address is a dead
// candidate.
const xorMappedTTL = 5 * time.Second

func newUDPMux(c *packetConn, port uint16, addrs func() []netip.Addr, log pionLogger) *udpMux {
	u := ice.NewUniversalUDPMuxDefault(ice.UniversalUDPMuxParams{
		Logger:                log.NewLogger("udpmux"),
		UDPConn:               c,
		XORMappedAddrCacheTTL: xorMappedTTL,
	})
	return &udpMux{UniversalUDPMuxDefault: u, port: int(port), addrs: addrs}
}

// GetListenAddresses returns the host's own underlay addresses (IPv4 only:
// the agents gather udp4) at the shared port.
func (u *udpMux) GetListenAddresses() []net.Addr {
	var out []net.Addr
	for _, a := range u.addrs() {
		a = a.Unmap()
		if !a.Is4() || a.IsLoopback() || a.IsUnspecified() {
			continue
		}
		out = append(out, &net.UDPAddr{IP: a.AsSlice(), Port: u.port})
	}
	return out
}
