package mcast

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

const (
	// membershipVersion is the first byte of a membership message. Version
	// 1 (groups without subnets) is refused: a host that cannot say on
	// which subnet its members are would break isolation.
	membershipVersion = 2
	membershipHdrLen  = 1 + 8 + 2
	subnetHdrLen      = 4 + 1 + 2
	// MaxGroups bounds the (subnet, group) pairs one host announces, and
	// MaxSubnets its subnets (at most 4 KB + 7 KB of message).
	MaxGroups  = 1024
	MaxSubnets = 1024

	dataVersion = 1
	// DataHdrLen is the header in front of a replicated datagram.
	DataHdrLen = 4
	// DataPortOffset: replicated datagrams go to --port + DataPortOffset on
	// the member's overlay address (--port+1 is VXLAN, +2 the userspace
	// socket once kernel WireGuard takes --port).
	DataPortOffset = 3
)

// DataPort is the UDP port replicated datagrams are sent to.
func DataPort(port int) int { return port + DataPortOffset }

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("mcast: malformed message")

// Membership is one host's whole state: the subnets its containers are on
// and, on each, the groups with members.
type Membership struct {
	Seq     uint64
	Subnets []SubnetGroups // ascending by subnet
}

// SubnetGroups are the groups with members on one subnet of a host.
type SubnetGroups struct {
	Subnet netip.Prefix // IPv4, masked
	Groups []netip.Addr // ascending, multicast, not link-local
}

// validGroup reports whether g may be announced: IPv4 multicast outside the
// link-local block, which stays on its host.
func validGroup(g netip.Addr) bool {
	return g.Is4() && g.IsMulticast() && !g.IsLinkLocalMulticast()
}

// validSubnet reports whether s may be announced: a masked IPv4 prefix.
func validSubnet(s netip.Prefix) bool {
	return s.IsValid() && s.Addr().Is4() && s == s.Masked()
}

// comparePrefix orders subnets by address, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// AppendMembership appends m's encoding to b.
func AppendMembership(b []byte, m Membership) ([]byte, error) {
	if len(m.Subnets) > MaxSubnets {
		return b, fmt.Errorf("mcast: %d subnets, at most %d", len(m.Subnets), MaxSubnets)
	}
	b = append(b, membershipVersion)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Subnets)))
	total := 0
	for i, s := range m.Subnets {
		if !validSubnet(s.Subnet) {
			return b, fmt.Errorf("mcast: %v is not a subnet that may be announced", s.Subnet)
		}
		if i > 0 && comparePrefix(m.Subnets[i-1].Subnet, s.Subnet) >= 0 {
			return b, fmt.Errorf("mcast: subnets not strictly ascending at %v", s.Subnet)
		}
		if total += len(s.Groups); total > MaxGroups {
			return b, fmt.Errorf("mcast: more than %d groups", MaxGroups)
		}
		a := s.Subnet.Addr().As4()
		b = append(b, a[:]...)
		b = append(b, byte(s.Subnet.Bits()))
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.Groups)))
		for j, g := range s.Groups {
			if !validGroup(g) {
				return b, fmt.Errorf("mcast: %v is not a group that may be announced", g)
			}
			if j > 0 && s.Groups[j-1].Compare(g) >= 0 {
				return b, fmt.Errorf("mcast: groups not strictly ascending at %v", g)
			}
			a := g.As4()
			b = append(b, a[:]...)
		}
	}
	return b, nil
}

// ParseMembership parses a membership message.
func ParseMembership(b []byte) (Membership, error) {
	if len(b) < membershipHdrLen {
		return Membership{}, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if b[0] != membershipVersion {
		return Membership{}, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	m := Membership{Seq: binary.BigEndian.Uint64(b[1:9])}
	n := int(binary.BigEndian.Uint16(b[9:11]))
	if n > MaxSubnets {
		return Membership{}, fmt.Errorf("%w: %d subnets", ErrMalformed, n)
	}
	b = b[membershipHdrLen:]
	m.Subnets = make([]SubnetGroups, 0, min(n, len(b)/subnetHdrLen))
	total := 0
	for i := range n {
		if len(b) < subnetHdrLen {
			return Membership{}, fmt.Errorf("%w: subnet %d truncated", ErrMalformed, i)
		}
		bits := int(b[4])
		if bits > 32 {
			return Membership{}, fmt.Errorf("%w: prefix length %d", ErrMalformed, bits)
		}
		s := SubnetGroups{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte(b[:4])), bits)}
		if !validSubnet(s.Subnet) {
			return Membership{}, fmt.Errorf("%w: %v is not a subnet", ErrMalformed, s.Subnet)
		}
		if i > 0 && comparePrefix(m.Subnets[i-1].Subnet, s.Subnet) >= 0 {
			return Membership{}, fmt.Errorf("%w: subnets not strictly ascending", ErrMalformed)
		}
		k := int(binary.BigEndian.Uint16(b[5:7]))
		if total += k; total > MaxGroups {
			return Membership{}, fmt.Errorf("%w: more than %d groups", ErrMalformed, MaxGroups)
		}
		b = b[subnetHdrLen:]
		if len(b) < 4*k {
			return Membership{}, fmt.Errorf("%w: %d bytes for %d groups", ErrMalformed, len(b), k)
		}
		s.Groups = make([]netip.Addr, 0, k)
		for j := range k {
			g := netip.AddrFrom4([4]byte(b[4*j:]))
			if !validGroup(g) {
				return Membership{}, fmt.Errorf("%w: %v is not a group that may be announced", ErrMalformed, g)
			}
			if j > 0 && s.Groups[j-1].Compare(g) >= 0 {
				return Membership{}, fmt.Errorf("%w: groups not strictly ascending", ErrMalformed)
			}
			s.Groups = append(s.Groups, g)
		}
		b = b[4*k:]
		m.Subnets = append(m.Subnets, s)
	}
	if len(b) != 0 {
		return Membership{}, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b))
	}
	return m, nil
}

// AppendData appends the replication header and pkt to b.
func AppendData(b, pkt []byte) []byte {
	b = append(b, 'W', 'M', dataVersion, 0)
	return append(b, pkt...)
}

// ParseData returns the IPv4 packet a replicated datagram carries.
func ParseData(b []byte) ([]byte, error) {
	if len(b) < DataHdrLen || b[0] != 'W' || b[1] != 'M' {
		return nil, fmt.Errorf("%w: not a replicated datagram", ErrMalformed)
	}
	if b[2] != dataVersion || b[3] != 0 {
		return nil, fmt.Errorf("%w: version %d.%d", ErrMalformed, b[2], b[3])
	}
	return b[DataHdrLen:], nil
}

// sortedGroups returns the valid groups of gs, ascending, without repeats.
func sortedGroups(gs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(gs))
	for _, g := range gs {
		if validGroup(g) {
			out = append(out, g)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
