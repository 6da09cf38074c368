package discovery

import "sync/atomic"

// Counter names, as returned by Router.Counters. They are stable: the daemon
// exports them as metrics.
const (
	CtrAccepted           = "control_accepted"               // inbound TCP connections accepted
	CtrHandshakeRateLimit = "control_handshake_ratelimited"  // inbound dropped by the per-IP token bucket
	CtrHandshakeBusy      = "control_handshake_busy"         // inbound dropped: too many handshakes in progress
	CtrHandshakeFailed    = "control_handshake_failed"       // any handshake failure (both directions), timeouts included
	CtrHandshakeTimeout   = "control_handshake_timeout"      // handshake or hello not done within 5 s
	CtrHandshakeBadSecret = "control_handshake_bad_secret"   // inbound message 1 did not decrypt: wrong secret or version
	CtrHandshakeRefused   = "control_handshake_refused"      // outbound closed by the peer after message 1
	CtrFrameOversized     = "control_frame_oversized"        // handshake frame above its bound
	CtrFrameDecryptFailed = "control_frame_decrypt_failed"   // transport frame failed to authenticate
	CtrMessageMalformed   = "control_message_malformed"      // message that does not parse
	CtrMessageUnknownType = "control_message_unknown_type"   // message of a type we do not know (ignored)
	CtrEstablished        = "control_established"            // connections that completed handshake + hello
	CtrConnSelf           = "control_connection_self"        // connections to ourselves, closed
	CtrConnDuplicate      = "control_connection_duplicate"   // duplicate connections to one peer, closed
	CtrConnLimit          = "control_connection_limit"       // inbound refused (referred to the mesh): at --conn-limit
	CtrConnBusy           = "control_connection_busy"        // outbound answered "at its connection limit" by the peer
	CtrConnClosed         = "control_connection_closed"      // established connections that ended
	CtrConnShed           = "control_connection_shed"        // ours closed at the limit to take a peer we did not reach (a joiner)
	CtrDialFailed         = "control_dial_failed"            // TCP dial or resolution failures
	CtrSendDropped        = "control_send_dropped"           // message dropped: connection send queue full
	CtrSendDiscarded      = "control_send_discarded"         // queued messages discarded: their connection closed
	CtrRecordsReceived    = "gossip_records_received"        // records received in records messages
	CtrRecordsApplied     = "gossip_records_applied"         // received records that were newer than ours
	CtrRecordsSent        = "gossip_records_sent"            // records queued for sending
	CtrRecordsTableFull   = "gossip_records_table_full"      // records of new peers ignored: MaxPeers known
	CtrRecordsBadSig      = "gossip_records_bad_signature"   // records dropped: not signed by their owner
	CtrRecordsFuture      = "gossip_records_future"          // records dropped: version over MaxVersionAhead ahead
	CtrChannelBadSig      = "gossip_channel_bad_signature"   // channel messages dropped: not signed by their source
	CtrAntiEntropy        = "gossip_antientropy_rounds"      // periodic digests to one neighbour
	CtrDigestsSent        = "gossip_digests_sent"            // digests (records held) sent: new connections, anti-entropy
	CtrDigestsReceived    = "gossip_digests_received"        // whole digests received (answered with what the sender lacks)
	CtrSummariesReceived  = "gossip_summaries_received"      // summaries received (anti-entropy rounds that send a digest only if they differ)
	CtrHavesSent          = "gossip_haves_sent"              // records announced (key, version) instead of forwarded whole
	CtrWantsSent          = "gossip_wants_sent"              // announced records asked for
	CtrPeersExpired       = "gossip_peers_expired"           // peers dropped after being unreachable too long
	CtrChannelSent        = "gossip_channel_sent"            // channel messages queued (own and forwarded)
	CtrChannelReceived    = "gossip_channel_received"        // channel messages delivered to a handler here
	CtrChannelForwarded   = "gossip_channel_forwarded"       // channel messages relayed towards their destination
	CtrChannelUnknown     = "gossip_channel_unknown"         // channel messages for a channel not registered here
	CtrChannelExpired     = "gossip_channel_expired"         // channel messages dropped: hop limit reached
	CtrChannelNoRoute     = "gossip_channel_no_route"        // channel messages dropped: destination unreachable (held 3 s first)
	CtrChannelParked      = "gossip_channel_parked"          // channel messages a relay held for want of a route to their destination
	CtrChannelDropped     = "gossip_channel_dropped"         // delivered messages dropped: handler queue full
	CtrChannelSendDropped = "gossip_channel_send_dropped"    // channel messages dropped: connection's channel queue full
	CtrJoinAdmitted       = "control_join_admitted"          // joiners admitted with a token
	CtrJoinRefused        = "control_join_refused"           // joiners refused (expired, revoked, used up, other network)
	CtrJoinUnsynced       = "control_join_unsynced"          // joiners refused: unknown token while the registry is being recovered
	CtrJoinEvicted        = "control_join_evicted"           // join attempts by an evicted peer's key, refused
	CtrConnEvicted        = "control_connection_evicted"     // control connections of an evicted peer, closed after the handshake
	CtrRecordsEvicted     = "gossip_records_evicted"         // records of evicted peers, dropped
	CtrChannelEvicted     = "gossip_channel_evicted"         // channel messages from or to an evicted peer, dropped
	CtrEvictBad           = "gossip_evict_bad"               // eviction records dropped: bad signature, self-eviction, far-future time
	CtrPeersEvicted       = "gossip_peers_evicted"           // peers that became evicted here
	CtrRotationBad        = "gossip_rotation_bad"            // secret rotations dropped: bad signature, evicted rotator, sealed box that does not open
	CtrRotationsAdopted   = "gossip_rotations_adopted"       // new network secrets taken from a rotation
	CtrConnStaleSecret    = "control_handshake_stale_secret" // connections under an inactive secret closed: not a member it was sealed to
	CtrCatchUpServed      = "control_catchup_served"         // members that were away sent the new secret
	CtrRoutesComputed     = "gossip_routes_computed"         // shortest-path computations (records that changed an edge)
)

var counterNames = []string{
	CtrAccepted, CtrHandshakeRateLimit, CtrHandshakeBusy, CtrHandshakeFailed,
	CtrHandshakeTimeout, CtrHandshakeBadSecret, CtrHandshakeRefused,
	CtrFrameOversized, CtrFrameDecryptFailed, CtrMessageMalformed,
	CtrMessageUnknownType, CtrEstablished, CtrConnSelf, CtrConnDuplicate,
	CtrConnLimit, CtrConnBusy, CtrConnClosed, CtrConnShed, CtrDialFailed, CtrSendDropped, CtrSendDiscarded,
	CtrRecordsReceived, CtrRecordsApplied, CtrRecordsSent, CtrRecordsTableFull, CtrAntiEntropy,
	CtrDigestsSent, CtrDigestsReceived, CtrSummariesReceived, CtrHavesSent, CtrWantsSent, CtrChannelParked, CtrRoutesComputed,
	CtrRecordsBadSig, CtrRecordsFuture, CtrChannelBadSig,
	CtrPeersExpired, CtrChannelSent, CtrChannelReceived, CtrChannelForwarded,
	CtrChannelUnknown, CtrChannelExpired, CtrChannelNoRoute, CtrChannelDropped, CtrChannelSendDropped,
	CtrJoinAdmitted, CtrJoinRefused, CtrJoinUnsynced,
	CtrJoinEvicted, CtrConnEvicted, CtrRecordsEvicted, CtrChannelEvicted, CtrEvictBad, CtrPeersEvicted,
	CtrRotationBad, CtrRotationsAdopted, CtrConnStaleSecret, CtrCatchUpServed,
}

// counters is a fixed set of atomic counters; the map is never written after
// newCounters, so reads need no lock.
type counters map[string]*atomic.Uint64

func newCounters() counters {
	c := make(counters, len(counterNames))
	for _, n := range counterNames {
		c[n] = new(atomic.Uint64)
	}
	return c
}

func (c counters) inc(name string) { c.add(name, 1) }

func (c counters) add(name string, n uint64) {
	v, ok := c[name]
	if !ok {
		panic("discovery: unknown counter " + name)
	}
	v.Add(n)
}

func (c counters) snapshot() map[string]uint64 {
	m := make(map[string]uint64, len(c))
	for n, v := range c {
		m[n] = v.Load()
	}
	return m
}

// frameCounts counts the frames a router wrote, by message type
// (FramesSent). The simulator counts each host's frames and bytes, not
// what they were: a change's frames per peer grew from N=300 to 1,000
// (issue 18), and its counters count entries (records, haves, wants),
// not the frames that carried them.
type frameCounts [16]atomic.Uint64

// msgNames names the message types for FramesSent.
var msgNames = [16]string{
	msgHello: "hello", msgRecords: "records", msgKeepalive: "keepalive",
	msgChannel: "channel", msgBusy: "busy", msgDigest: "digest",
	msgHave: "have", msgWant: "want", msgSummary: "summary",
	msgFeatures: "features", msgMulticast: "multicast", 15: "other",
}

func (f *frameCounts) inc(m []byte) {
	if len(m) == 0 {
		return
	}
	t := int(m[0])
	if t >= len(f) || msgNames[t] == "" {
		t = 15
	}
	f[t].Add(1)
}

// FramesSent returns how many frames this router has written on its
// control connections, by message type ("have", "records", "channel",
// ...; types it does not name as "other"), handshakes not included.
func (r *Router) FramesSent() map[string]uint64 {
	m := map[string]uint64{}
	for t := range r.frames {
		if v := r.frames[t].Load(); v > 0 {
			m[msgNames[t]] += v
		}
	}
	return m
}
