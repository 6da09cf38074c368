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

	relay [numRelayCounters]atomic.Uint64 // relay outcomes, by relayCounter

	natAnswers atomic.Uint64 // ICMP port unreachable from a peer's NAT for our datagram (natanswer.go)
}

// relayCounter indexes the relay outcome counters; relayCounterNames holds
// their exported names.
type relayCounter int

const (
	rcDelivered       relayCounter = iota // data frames for us, handed to wireguard-go
	rcForwarded                           // frames sent on towards their destination
	rcSent                                // datagrams we wrapped and sent to a relay
	rcUnknownSource                       // dropped: UDP source is no member's address
	rcUnknownPeer                         // dropped: names a peer not in the table (or us as source)
	rcMalformed                           // dropped: bad header, type or payload
	rcHopLimit                            // dropped: hop limit exhausted
	rcRateLimited                         // dropped: the source peer's forwarding budget is spent
	rcNoRoute                             // dropped: no address to send towards the destination
	rcSendErrors                          // forwarding or sending failed in the socket
	rcBadProbe                            // probe replies dropped: an impossible timestamp
	rcBadMAC                              // probes or replies dropped: MAC not the pair's
	rcReplayed                            // probes or replies dropped: counter seen before or too old
	rcEndpointLearned                     // a peer's endpoint moved to where its authenticated probe came from
	rcProbesSent                          // probes sent
	rcProbesAnswered                      // probes answered
	rcProbeReplies                        // valid probe replies received
	rcDeliveredBytes                      // bytes of rcDelivered frames (WireGuard payload)
	rcForwardedBytes                      // bytes of rcForwarded frames (whole frames)
	rcSentBytes                           // bytes of rcSent datagrams (WireGuard payload)
	numRelayCounters
)

var relayCounterNames = [numRelayCounters]string{
	rcDelivered:       "udp_relay_delivered",
	rcForwarded:       "udp_relay_forwarded",
	rcSent:            "udp_relay_sent",
	rcUnknownSource:   "udp_relay_dropped_unknown_source",
	rcUnknownPeer:     "udp_relay_dropped_unknown_peer",
	rcMalformed:       "udp_relay_dropped_malformed",
	rcHopLimit:        "udp_relay_dropped_hop_limit",
	rcRateLimited:     "udp_relay_dropped_rate_limited",
	rcNoRoute:         "udp_relay_dropped_no_route",
	rcSendErrors:      "udp_relay_send_errors",
	rcBadProbe:        "udp_relay_dropped_bad_probe",
	rcBadMAC:          "udp_relay_dropped_bad_mac",
	rcReplayed:        "udp_relay_dropped_replayed",
	rcEndpointLearned: "udp_relay_endpoints_learned",
	rcProbesSent:      "udp_relay_probes_sent",
	rcProbesAnswered:  "udp_relay_probes_answered",
	rcProbeReplies:    "udp_relay_probe_replies",
	rcDeliveredBytes:  "udp_relay_delivered_bytes",
	rcForwardedBytes:  "udp_relay_forwarded_bytes",
	rcSentBytes:       "udp_relay_sent_bytes",
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
	// Handshake messages of ours sent again on the peer's current path,
	// unanswered after handshakeRetryAfter (handshake.go).
	CounterHandshakeRetransmits = "udp_handshake_retransmits"
	// Initiations from a peer dropped because ours to it crossed them and
	// our relay ID orders first: the peer answers ours (handshake.go).
	CounterHandshakeCrossedDropped = "udp_handshake_crossed_dropped"
	// wireguard-go's initiations (and their copies) not sent: to a peer
	// on the kernel device, whose answer would reach the kernel socket
	// (kernelpeers.go).
	CounterHandshakeToKernelDropped = "udp_handshake_to_kernel_peer_dropped"
	// ICMP port unreachable from a peer's NAT for our datagram to the
	// peer's mapping: that NAT takes unsolicited datagrams in
	// (natanswer.go).
	CounterNATPortUnreachable = "nat_port_unreachable"
)

func (c *counters) snapshot() map[string]uint64 {
	m := map[string]uint64{
		CounterUDPWireGuard:      c.byKind[KindWireGuard].Load(),
		CounterUDPSTUN:           c.byKind[KindSTUN].Load(),
		CounterUDPRelay:          c.byKind[KindRelay].Load(),
		CounterUDPJunkDropped:    c.byKind[KindJunk].Load(),
		CounterUDPSTUNUnhandled:  c.stunUnhandled.Load(),
		CounterUDPRelayUnhandled: c.relayUnhandled.Load(),
		CounterUDPReceiveBatches: c.batches.Load(),
	}
	for i := range c.relay {
		m[relayCounterNames[i]] = c.relay[i].Load()
	}
	return m
}

// addRelay adds a batch's relay outcomes, once per batch.
func (c *counters) addRelay(n *[numRelayCounters]uint64) {
	for i, v := range n {
		if v != 0 {
			c.relay[i].Add(v)
		}
	}
}
