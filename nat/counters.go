package nat

import "sync/atomic"

// Counter names, as reported by Counters. Every STUN datagram handed to the
// Manager ends in exactly one of the stun_* outcomes.
const (
	CounterSTUNAnswered      = "nat_stun_answered"            // Binding requests answered (we are a STUN server)
	CounterSTUNRateLimited   = "nat_stun_rate_limited"        // Binding requests not answered: over budget
	CounterSTUNMalformed     = "nat_stun_malformed"           // not STUN, truncated attributes, bad fingerprint
	CounterSTUNUnknownUfrag  = "nat_stun_unknown_ufrag"       // checks for no session of ours
	CounterSTUNBadIntegrity  = "nat_stun_bad_integrity"       // checks or answers with wrong credentials
	CounterSTUNUnknownTxn    = "nat_stun_unknown_transaction" // answers to nothing we asked
	CounterSTUNWrongSource   = "nat_stun_wrong_source"        // answers from another address than we asked
	CounterSTUNUnexpected    = "nat_stun_unexpected"          // indications, other methods, requests without credentials but with integrity
	CounterSTUNToICE         = "nat_stun_to_ice"              // handed to the ICE agents
	CounterSTUNQueueDropped  = "nat_stun_queue_dropped"       // oldest dropped: the agents' queue was full
	CounterSignalMalformed   = "nat_signal_malformed"         // "nat" channel messages that did not parse
	CounterSignalStale       = "nat_signal_stale"             // for a session that is over
	CounterSessionsStarted   = "nat_ice_sessions_started"
	CounterSessionsConnected = "nat_ice_sessions_connected"
	CounterSessionsFailed    = "nat_ice_sessions_failed"
	CounterPathsDead         = "nat_ice_paths_dead"     // ICE paths the tunnel's probes found dead
	CounterSessionsIdled     = "nat_ice_sessions_idled" // closed because their pair went idle
	CounterSignalHeld        = "nat_signal_held"        // offers and requests not taken: our path holds off the peer (SetHeld)
)

type counter int

const (
	cSTUNAnswered counter = iota
	cSTUNRateLimited
	cSTUNMalformed
	cSTUNUnknownUfrag
	cSTUNBadIntegrity
	cSTUNUnknownTxn
	cSTUNWrongSource
	cSTUNUnexpected
	cSTUNToICE
	cSTUNQueueDropped
	cSignalMalformed
	cSignalStale
	cSessionsStarted
	cSessionsConnected
	cSessionsFailed
	cPathsDead
	cSessionsIdled
	cSignalHeld
	numCounters
)

var counterNames = [numCounters]string{
	CounterSTUNAnswered, CounterSTUNRateLimited, CounterSTUNMalformed, CounterSTUNUnknownUfrag,
	CounterSTUNBadIntegrity, CounterSTUNUnknownTxn, CounterSTUNWrongSource, CounterSTUNUnexpected,
	CounterSTUNToICE, CounterSTUNQueueDropped, CounterSignalMalformed, CounterSignalStale,
	CounterSessionsStarted, CounterSessionsConnected, CounterSessionsFailed, CounterPathsDead,
	CounterSessionsIdled, CounterSignalHeld,
}

// counters are safe for concurrent use and on a nil receiver.
type counters struct{ c [numCounters]atomic.Uint64 }

func (c *counters) inc(i counter) {
	if c != nil {
		c.c[i].Add(1)
	}
}

func (c *counters) snapshot() map[string]uint64 {
	m := make(map[string]uint64, numCounters)
	for i := range c.c {
		m[counterNames[i]] = c.c[i].Load()
	}
	return m
}
