package discovery

import (
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Parking: a relay that has no route yet towards a channel message's
// destination holds the message for up to parkFor and forwards it when
// its routes change, rather than drop it. The sender's routes can be
// ahead of a relay's: a peer that just joined is reachable at its
// neighbours before their new records have reached the relays between
// them and a sender, and a dropped message (a DNS table sent to the
// arrival, an IPAM grant) waited for the next anti-entropy round, 10 s or
// more (at 60 simulated peers a joiner's names arrived over 10 s).
const (
	parkFor = 3 * time.Second
	// maxParked bounds the messages held; beyond it the oldest is dropped
	// (gossip_channel_no_route).
	maxParked = 1024
)

type parkedMsg struct {
	dst   key.Public
	wire  []byte
	until time.Time
}

// parkLocked holds wire (forwarded, its hop count already decremented)
// until a route to dst appears.
func (r *Router) parkLocked(dst key.Public, wire []byte) {
	if len(r.parked) >= maxParked {
		r.parked = r.parked[1:]
		r.ctr.inc(CtrChannelNoRoute)
	}
	r.ctr.inc(CtrChannelParked)
	r.parked = append(r.parked, parkedMsg{dst: dst, wire: wire, until: r.now().Add(parkFor)})
}

// retryParkedLocked forwards the held messages that now have a route and
// drops those held past parkFor. Called after the routes change and on
// the maintenance tick.
func (r *Router) retryParkedLocked() {
	if len(r.parked) == 0 {
		return
	}
	now := r.now()
	held := r.parked
	r.parked = nil
	for _, p := range held {
		switch {
		case r.routeLocked(p.dst):
			r.forwardLocked(p.dst, p.wire)
			r.ctr.inc(CtrChannelForwarded)
		case now.After(p.until):
			r.ctr.inc(CtrChannelNoRoute)
		default:
			r.parked = append(r.parked, p)
		}
	}
}

// routeLocked reports whether a message to dst can be queued now, without
// recomputing routes.
func (r *Router) routeLocked(dst key.Public) bool {
	nh, ok := r.rt.nextHop(dst)
	return ok && r.active[nh] != nil
}
