package mcast

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

const (
	// membershipVersion is the first byte of a membership message.
	membershipVersion = 1
	membershipHdrLen  = 1 + 8 + 2
	// MaxGroups bounds the groups one host announces (4 KB of message).
	MaxGroups = 1024

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

// Membership is one host's whole set of groups with members.
type Membership struct {
	Seq    uint64
	Groups []netip.Addr // ascending, multicast, not link-local
}

// validGroup reports whether g may be announced: IPv4 multicast outside the
// link-local block, which stays on its host.
func validGroup(g netip.Addr) bool {
	return g.Is4() && g.IsMulticast() && !g.IsLinkLocalMulticast()
}

// AppendMembership appends m's encoding to b.
func AppendMembership(b []byte, m Membership) ([]byte, error) {
	if len(m.Groups) > MaxGroups {
		return b, fmt.Errorf("mcast: %d groups, at most %d", len(m.Groups), MaxGroups)
	}
	b = append(b, membershipVersion)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Groups)))
	for i, g := range m.Groups {
		if !validGroup(g) {
			return b, fmt.Errorf("mcast: %v is not a group that may be announced", g)
		}
		if i > 0 && m.Groups[i-1].Compare(g) >= 0 {
			return b, fmt.Errorf("mcast: groups not strictly ascending at %v", g)
		}
		a := g.As4()
		b = append(b, a[:]...)
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
	if n > MaxGroups {
		return Membership{}, fmt.Errorf("%w: %d groups", ErrMalformed, n)
	}
	if len(b) != membershipHdrLen+4*n {
		return Membership{}, fmt.Errorf("%w: %d bytes for %d groups", ErrMalformed, len(b), n)
	}
	m.Groups = make([]netip.Addr, 0, n)
	for i := range n {
		g := netip.AddrFrom4([4]byte(b[membershipHdrLen+4*i:]))
		if !validGroup(g) {
			return Membership{}, fmt.Errorf("%w: %v is not a group that may be announced", ErrMalformed, g)
		}
		if i > 0 && m.Groups[i-1].Compare(g) >= 0 {
			return Membership{}, fmt.Errorf("%w: groups not strictly ascending", ErrMalformed)
		}
		m.Groups = append(m.Groups, g)
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
