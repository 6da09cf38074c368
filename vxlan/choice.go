package vxlan

import (
	"net/netip"
	"time"
)

// # Path choice
//
// Every trusted peer is probed over the VXLAN device each ProbeInterval
// (probe.go has the frame). A peer is put on VXLAN once its probes have been
// answered without a gap for UpAfter, and taken off as soon as no answer has
// come for DeadAfter; it then goes back to WireGuard, whose peer and keys
// were never removed, so only the routes change and established flows keep
// their addresses. UpAfter keeps a path that answers only now and then from
// flapping between the two.
//
// Path is the rule for one peer, with no clock, no I/O and no locking of its
// own: times are unix nanoseconds passed in, and its owner serialises calls.
// A path-choice owner that holds every path kind can keep one Path per peer
// for its VXLAN kind and ask Use.
const (
	ProbeInterval = 1 * time.Second
	DeadAfter     = 3 * time.Second
	UpAfter       = 2 * time.Second
)

// Path is the VXLAN path state of one peer.
type Path struct {
	trusted    bool
	using      bool
	firstReply int64 // start of the current streak of answers; 0 none
	lastReply  int64 // last answer; 0 none
	rtt        time.Duration
}

// SetTrusted records whether both ends of the pair lie in trusted subnets.
// An untrusted pair never uses VXLAN, whatever its probes say.
func (p *Path) SetTrusted(t bool) { p.trusted = t }

// Trusted reports what SetTrusted last said.
func (p *Path) Trusted() bool { return p.trusted }

// Replied records a probe answer received at now that took rtt.
func (p *Path) Replied(now int64, rtt time.Duration) {
	if p.lastReply == 0 || now-p.lastReply > int64(DeadAfter) {
		p.firstReply = now
	}
	p.lastReply = now
	p.rtt = rtt
}

// RTT is the round trip of the last answered probe; 0 when none.
func (p *Path) RTT() time.Duration { return p.rtt }

// Decide applies the rule at now and reports whether the peer is to use
// VXLAN, and whether that changed since the last call.
func (p *Path) Decide(now int64) (use, changed bool) {
	fresh := p.lastReply != 0 && now-p.lastReply <= int64(DeadAfter)
	switch {
	case !p.trusted || !fresh:
		use = false
	case p.using:
		use = true
	default:
		use = now-p.firstReply >= int64(UpAfter)
	}
	if !fresh {
		p.firstReply = 0
	}
	changed = use != p.using
	p.using = use
	return use, changed
}

// Using reports the last decision.
func (p *Path) Using() bool { return p.using }

// Trusted is a set of trusted underlay subnets (--trusted-subnets).
type Trusted []netip.Prefix

// Contains reports whether a lies in one of the subnets.
func (t Trusted) Contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Pair reports whether traffic between local and remote underlay addresses
// may go unencrypted: both lie in trusted subnets.
func (t Trusted) Pair(local, remote netip.Addr) bool {
	return local.IsValid() && remote.IsValid() && t.Contains(local) && t.Contains(remote)
}
