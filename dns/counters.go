package dns

import "sync/atomic"

// counters counts every outcome on the query path and of gossip. Names are
// the keys of Server.Counters.
type counters struct {
	queries        atomic.Uint64 // every query handed to the handler
	answeredLocal  atomic.Uint64 // NOERROR with records from the table
	nodata         atomic.Uint64 // name exists, no records of the type
	nxdomain       atomic.Uint64 // name under the domain (or overlay PTR) unknown
	refused        atomic.Uint64 // ANY, zone transfers, non-IN class in our zones
	notimp         atomic.Uint64 // opcode other than QUERY
	formerr        atomic.Uint64 // header parsed but message rejected (qdcount != 1, ...)
	malformed      atomic.Uint64 // could not be parsed at all (dropped or FORMERR)
	truncated      atomic.Uint64 // local UDP answer cut to the client's size, TC set
	forwarded      atomic.Uint64 // answered from an upstream
	forwardFailed  atomic.Uint64 // no upstream answered: SERVFAIL
	forwardTCP     atomic.Uint64 // truncated UDP upstream answer retried over TCP
	forwardTimeout atomic.Uint64 // upstream attempts that failed or timed out
	writeFailed    atomic.Uint64 // writing the answer to the client failed

	droppedNotClient   atomic.Uint64 // query from outside Config.Clients, unanswered
	forwardDroppedRate atomic.Uint64 // source over its forward rate, unanswered
	forwardDroppedBusy atomic.Uint64 // MaxForwards in flight: SERVFAIL at once

	gossipUpdatesIn  atomic.Uint64 // update messages merged
	gossipStateIn    atomic.Uint64 // state messages merged
	gossipMalformed  atomic.Uint64 // rejected gossip messages
	gossipUnknown    atomic.Uint64 // unknown version or type, ignored
	gossipSent       atomic.Uint64 // messages handed to the transport
	gossipNotOwner   atomic.Uint64 // entries dropped: sent by a peer that does not own them
	gossipFuture     atomic.Uint64 // entries dropped: version over MaxVersionAhead ahead
	digestSent       atomic.Uint64 // digests sent (digest.go)
	digestReceived   atomic.Uint64 // digests received
	summarySent      atomic.Uint64 // digests answered with a summary: the tables differed
	pullSent         atomic.Uint64 // owners asked for their entries (a summary showed them newer)
	pullAnswered     atomic.Uint64 // pulls answered with our own entries
	digestBack       atomic.Uint64 // differing digests answered with a digest back
	sendFailed       atomic.Uint64 // messages to one peer not sent: no route to it
	pullRepaired     atomic.Uint64 // entries a pull brought that we lacked: lost on their way (or still on it)
	roundSent        atomic.Uint64 // anti-entropy rounds that broadcast our entries (Tick: no Sender, or more than fullUpdateMax)
	welcomeSent      atomic.Uint64 // arrivals sent what they take from us (welcome)
	welcomeMulticast atomic.Uint64 // welcomes multicast to several arrivals at once (welcome.go)
	staleReturned    atomic.Uint64 // entries sent back to their owner, whose state lacked them (returnStale)
}

func (c *counters) snapshot() map[string]uint64 {
	return map[string]uint64{
		"dns_queries":                c.queries.Load(),
		"dns_answered_local":         c.answeredLocal.Load(),
		"dns_nodata":                 c.nodata.Load(),
		"dns_nxdomain":               c.nxdomain.Load(),
		"dns_refused":                c.refused.Load(),
		"dns_notimp":                 c.notimp.Load(),
		"dns_formerr":                c.formerr.Load(),
		"dns_malformed":              c.malformed.Load(),
		"dns_truncated":              c.truncated.Load(),
		"dns_forwarded":              c.forwarded.Load(),
		"dns_forward_failed":         c.forwardFailed.Load(),
		"dns_forward_tcp_retries":    c.forwardTCP.Load(),
		"dns_forward_upstream_error": c.forwardTimeout.Load(),
		"dns_write_failed":           c.writeFailed.Load(),
		"dns_dropped_not_client":     c.droppedNotClient.Load(),
		"dns_forward_dropped_rate":   c.forwardDroppedRate.Load(),
		"dns_forward_dropped_busy":   c.forwardDroppedBusy.Load(),
		"dns_gossip_updates_in":      c.gossipUpdatesIn.Load(),
		"dns_gossip_state_in":        c.gossipStateIn.Load(),
		"dns_gossip_malformed":       c.gossipMalformed.Load(),
		"dns_gossip_unknown":         c.gossipUnknown.Load(),
		"dns_gossip_sent":            c.gossipSent.Load(),
		"dns_gossip_not_owner":       c.gossipNotOwner.Load(),
		"dns_gossip_future":          c.gossipFuture.Load(),
		"dns_digest_sent":            c.digestSent.Load(),
		"dns_digest_received":        c.digestReceived.Load(),
		"dns_digest_differed":        c.summarySent.Load(),
		"dns_pull_sent":              c.pullSent.Load(),
		"dns_pull_answered":          c.pullAnswered.Load(),
		"dns_digest_back":            c.digestBack.Load(),
		"dns_send_failed":            c.sendFailed.Load(),
		"dns_pull_repaired":          c.pullRepaired.Load(),
		"dns_round_sent":             c.roundSent.Load(),
		"dns_welcome_sent":           c.welcomeSent.Load(),
		"dns_welcome_multicast":      c.welcomeMulticast.Load(),
		"dns_stale_returned":         c.staleReturned.Load(),
	}
}
