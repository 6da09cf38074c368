package ipam

import (
	"math/bits"
	"net/netip"
)

func a2u(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u2a(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

// Prefixes decomposes s into the fewest CIDR prefixes, in address order.
func (s Span) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	lo, hi := uint64(s.First), uint64(s.Last)+1
	for lo < hi {
		// Largest block aligned at lo that fits below hi.
		size := uint64(1) << 32
		if lo != 0 {
			size = uint64(1) << bits.TrailingZeros64(lo)
		}
		for size > hi-lo {
			size >>= 1
		}
		out = append(out, netip.PrefixFrom(u2a(uint32(lo)), 32-bits.TrailingZeros64(size)))
		lo += size
	}
	return out
}

// SpansToPrefixes decomposes spans into CIDR prefixes.
func SpansToPrefixes(spans []Span) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range spans {
		out = append(out, s.Prefixes()...)
	}
	return out
}

// largestBlock returns the largest aligned CIDR block inside s (the lowest
// one among equals).
func (s Span) largestBlock() Span {
	var best Span
	var bestSize uint64
	for _, p := range s.Prefixes() {
		if n := uint64(1) << (32 - p.Bits()); n > bestSize {
			bestSize = n
			f := a2u(p.Addr())
			best = Span{f, f + uint32(n-1)}
		}
	}
	return best
}
