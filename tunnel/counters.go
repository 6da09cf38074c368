package tunnel

import "sync/atomic"

// counters are the datagram sorting counters of one Bind. They are plain
// atomics: the receive path adds a batch's totals once per batch, without a
// lock and without allocating.
type counters struct {
	byKind [numKinds]atomic.Uint64 // datagrams received, by Classify verdict

	stunUnhandled  atomic.Uint64 // STUN datagrams dropped: no handler set
	relayUnhandled atomic.Uint64 // relay frames dropped: no handler set
	batches        atomic.Uint64 // successful receive calls
}

// Counter names, stable: the daemon exports them as metrics.
const (
	CounterUDPWireGuard      = "udp_wireguard"       // datagrams handed to wireguard-go
	CounterUDPSTUN           = "udp_stun"            // STUN datagrams taken out of the stream
	CounterUDPRelay          = "udp_relay"           // relay frames taken out of the stream
	CounterUDPJunkDropped    = "udp_junk_dropped"    // datagrams of no known kind, dropped
	CounterUDPSTUNUnhandled  = "udp_stun_unhandled"  // STUN datagrams dropped for want of a handler
	CounterUDPRelayUnhandled = "udp_relay_unhandled" // relay frames dropped for want of a handler
	CounterUDPReceiveBatches = "udp_receive_batches" // receive calls that returned datagrams
)

func (c *counters) snapshot() map[string]uint64 {
	return map[string]uint64{
		CounterUDPWireGuard:      c.byKind[KindWireGuard].Load(),
		CounterUDPSTUN:           c.byKind[KindSTUN].Load(),
		CounterUDPRelay:          c.byKind[KindRelay].Load(),
		CounterUDPJunkDropped:    c.byKind[KindJunk].Load(),
		CounterUDPSTUNUnhandled:  c.stunUnhandled.Load(),
		CounterUDPRelayUnhandled: c.relayUnhandled.Load(),
		CounterUDPReceiveBatches: c.batches.Load(),
	}
}
