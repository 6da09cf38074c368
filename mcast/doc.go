// Package mcast decides where a container's multicast or broadcast datagram
// goes beyond its host, and what a datagram replicated from another host may
// deliver here: the group memberships of every host (gossiped), head-end
// replication to the hosts with members, and the two wire formats below. It
// does no I/O: hostnet taps the bridge and reads its snooping table, the
// daemon carries the messages.
//
// A membership message (payload of the "mcast" gossip channel, signed end
// to end by the channel, so a host speaks only for its own groups):
//
//	+-----------+--------+--------+------------------------------------+
//	| version 2 | seq 8  | n 2    | n × subnet                         |
//	| (1)       | BE u64 | BE u16 | ascending (address, then length)   |
//	+-----------+--------+--------+------------------------------------+
//	subnet:
//	+-----------+--------+--------+-------------------+
//	| address 4 | bits 1 | k 2    | k × group 4       |
//	| (masked)  | ≤ 32   | BE u16 | IPv4, ascending   |
//	+-----------+--------+--------+-------------------+
//
// It is the sender's whole state: the subnets its containers are on, and
// on each the groups with members there. A receiver keeps, per peer, the
// message with the highest seq (seqs start at the start time in
// nanoseconds, so a restarted host's state wins). Groups are multicast
// addresses outside 224.0.0.0/24; each list strictly ascending (so each
// state has one encoding); at most MaxSubnets subnets and MaxGroups
// groups in all; anything else, or trailing bytes, refuses the message
// whole. Version 1 (groups without subnets) is refused.
//
// A replicated datagram (UDP payload to port DataPort(--port) on the member
// host's overlay address, so WireGuard carries it like any packet to that
// host, relayed where the pair is relayed):
//
//	+------+------+-----------+----------+---------------------------------+
//	| 'W'  | 'M'  | version 1 | 0        | the IPv4 packet, TTL already    |
//	| 0x57 | 0x4d | (1)       | reserved | decremented by the sending host |
//	+------+------+-----------+----------+---------------------------------+
package mcast
