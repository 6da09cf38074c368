package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/pmtu"
)

// rawSender sends UDP datagrams from our port with DF set through a raw IPv4
// socket (IP_HDRINCL): the kernel neither fragments them nor consults its
// path MTU cache (it refuses only what exceeds the outgoing link's MTU), so
// a probe that arrives really crossed at its size. The UDP checksum is left
// zero (none, allowed over IPv4), the source address to the kernel's route.
type rawSender struct {
	fd   int
	port uint16
	buf  []byte // owned by the MTU loop
}

// openRawSender opens the socket in the calling thread's namespace.
func openRawSender(port uint16) (*rawSender, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("path MTU probes: raw socket: %w", err)
	}
	return &rawSender{fd: fd, port: port, buf: make([]byte, 0, 65535)}, nil
}

func (s *rawSender) close() {
	if s != nil && s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}

// send sends payload to dst (IPv4 only; others are refused).
func (s *rawSender) send(payload []byte, dst netip.AddrPort) error {
	if !dst.Addr().Unmap().Is4() {
		return errors.New("path MTU probes: IPv4 only")
	}
	n := 28 + len(payload)
	if n > cap(s.buf) {
		return unix.EMSGSIZE
	}
	p := s.buf[:n]
	clear(p[:28])
	p[0] = 0x45                                    // IPv4, 20-byte header
	binary.BigEndian.PutUint16(p[2:], uint16(n))   // total length
	binary.BigEndian.PutUint16(p[6:], 0x4000)      // DF
	p[8], p[9] = 64, unix.IPPROTO_UDP              // TTL, protocol; the kernel fills ID, checksum, source
	d4 := dst.Addr().Unmap().As4()                 //
	copy(p[16:20], d4[:])                          //
	binary.BigEndian.PutUint16(p[20:], s.port)     // UDP source port: the shared socket's
	binary.BigEndian.PutUint16(p[22:], dst.Port()) //
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return unix.Sendto(s.fd, p, 0, &unix.SockaddrInet4{Addr: d4})
}

// routeMTU is the MTU of the route towards dst in the tunnel's namespace:
// the route's own MTU (which includes a path MTU the kernel learnt from
// ICMP "fragmentation needed"), else its link's. It also returns the link's
// MTU, the most a probe can be.
func routeMTU(nl *netlink.Handle, dst netip.Addr) (route, link int, err error) {
	rs, err := nl.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		return 0, 0, fmt.Errorf("route to %s: %v", dst, err)
	}
	r := rs[0]
	l, err := nl.LinkByIndex(r.LinkIndex)
	if err != nil {
		return 0, 0, fmt.Errorf("route to %s: link %d: %w", dst, r.LinkIndex, err)
	}
	link = l.Attrs().MTU
	route = link
	if r.MTU > 0 && r.MTU < link {
		route = r.MTU
	}
	return route, link, nil
}

// UnderlayMTU is the overlay MTU the underlay allows, found in the calling
// thread's network namespace: the largest MTU of the routes towards dsts
// (the peers known at start) and of the default route, else of the up,
// non-loopback links with a global IPv4 address, less the WireGuard
// overhead (pmtu.FromUnderlay). The largest, because peers behind smaller
// paths get a smaller MTU on their own routes (mtu.go) and every other pair
// keeps full-size packets. why says where the figure came from.
func UnderlayMTU(dsts []netip.Addr, skip ...string) (mtu int, why string, err error) {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return 0, "", fmt.Errorf("underlay MTU: %w", err)
	}
	defer nl.Close()
	best, bestWhy := 0, ""
	consider := func(m int, what string) {
		if m > best {
			best, bestWhy = m, what
		}
	}
	for _, d := range dsts {
		if r, _, err := routeMTU(nl, d.Unmap()); err == nil {
			consider(r, fmt.Sprintf("route to %s", d))
		}
	}
	if rs, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_TABLE); err == nil {
		for _, r := range rs {
			if r.Dst != nil && r.Dst.IP != nil && !r.Dst.IP.IsUnspecified() {
				continue // only the default route
			}
			if l, err := nl.LinkByIndex(r.LinkIndex); err == nil {
				m := l.Attrs().MTU
				if r.MTU > 0 && r.MTU < m {
					m = r.MTU
				}
				consider(m, "default route via "+l.Attrs().Name)
			}
		}
	}
	if best == 0 {
		links, err := nl.LinkList()
		if err != nil {
			return 0, "", fmt.Errorf("underlay MTU: listing links: %w", err)
		}
	links:
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagUp == 0 || a.Flags&net.FlagLoopback != 0 {
				continue
			}
			for _, s := range skip {
				if a.Name == s {
					continue links
				}
			}
			addrs, _ := nl.AddrList(l, netlink.FAMILY_V4)
			for _, ad := range addrs {
				if ad.IP.IsGlobalUnicast() {
					consider(a.MTU, "link "+a.Name)
					break
				}
			}
		}
	}
	if best == 0 {
		return pmtu.DefaultMTU, "no underlay route or link found: default", nil
	}
	return pmtu.FromUnderlay(best, false), fmt.Sprintf("%s, MTU %d", bestWhy, best), nil
}
