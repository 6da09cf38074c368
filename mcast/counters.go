package mcast

import "sync/atomic"

// counters count every outcome of replication (status --json, Prometheus).
type counters struct {
	txDatagrams    atomic.Uint64 // datagrams replicated to at least one host
	txReplicated   atomic.Uint64 // copies sent
	txSendFailed   atomic.Uint64
	txNoMembers    atomic.Uint64 // no other host has members: stays here
	txTTL          atomic.Uint64 // TTL 1: may not leave the host
	txLinkLocal    atomic.Uint64 // 224.0.0.0/24 without --multicast-link-local
	txNotLocal     atomic.Uint64 // source not this host's container
	txNoSubnet     atomic.Uint64 // source on none of this host's subnets
	txNotMulticast atomic.Uint64
	txMalformed    atomic.Uint64

	rxDelivered     atomic.Uint64
	rxDeliverFailed atomic.Uint64
	rxUnknownPeer   atomic.Uint64 // not from a reachable peer's host address
	rxMalformed     atomic.Uint64
	rxSource        atomic.Uint64 // inner source not the sender's
	rxNoMembers     atomic.Uint64 // group without members here on the sender's subnet
	rxSubnet        atomic.Uint64 // no container here on the sender's subnet
	rxLinkLocal     atomic.Uint64
	rxNotMulticast  atomic.Uint64 // a unicast destination: never put on the bridge

	membershipMalformed   atomic.Uint64
	membershipStale       atomic.Uint64
	membershipUnknownPeer atomic.Uint64
	groupsOverLimit       atomic.Uint64
	subnetsOverLimit      atomic.Uint64
}

// Counters returns the engine's counters by name.
func (e *Engine) Counters() map[string]uint64 {
	c := &e.counters
	return map[string]uint64{
		"mcast_tx_datagrams":             c.txDatagrams.Load(),
		"mcast_tx_replicated":            c.txReplicated.Load(),
		"mcast_tx_dropped_send":          c.txSendFailed.Load(),
		"mcast_tx_no_members":            c.txNoMembers.Load(),
		"mcast_tx_dropped_ttl":           c.txTTL.Load(),
		"mcast_tx_link_local":            c.txLinkLocal.Load(),
		"mcast_tx_dropped_not_local":     c.txNotLocal.Load(),
		"mcast_tx_dropped_no_subnet":     c.txNoSubnet.Load(),
		"mcast_tx_dropped_not_multicast": c.txNotMulticast.Load(),
		"mcast_tx_dropped_malformed":     c.txMalformed.Load(),
		"mcast_rx_delivered":             c.rxDelivered.Load(),
		"mcast_rx_dropped_deliver":       c.rxDeliverFailed.Load(),
		"mcast_rx_dropped_unknown_peer":  c.rxUnknownPeer.Load(),
		"mcast_rx_dropped_malformed":     c.rxMalformed.Load(),
		"mcast_rx_dropped_source":        c.rxSource.Load(),
		"mcast_rx_dropped_no_members":    c.rxNoMembers.Load(),
		"mcast_rx_dropped_subnet":        c.rxSubnet.Load(),
		"mcast_rx_dropped_link_local":    c.rxLinkLocal.Load(),
		"mcast_rx_dropped_not_multicast": c.rxNotMulticast.Load(),
		"mcast_membership_malformed":     c.membershipMalformed.Load(),
		"mcast_membership_stale":         c.membershipStale.Load(),
		"mcast_membership_unknown_peer":  c.membershipUnknownPeer.Load(),
		"mcast_groups_over_limit":        c.groupsOverLimit.Load(),
		"mcast_subnets_over_limit":       c.subnetsOverLimit.Load(),
	}
}
