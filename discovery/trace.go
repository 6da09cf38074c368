package discovery

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Trace: Config.Trace receives each step of this peer's connection making,
// so a harness can print one peer's timeline (simbench -timeline: when a
// joiner dialled whom, who refused it, when its first connection came).
// Counters sum such steps over time and peers; a join's wait is a chain
// of them, and only their order says which timer it waited for.

// TraceKind is what a TraceEvent reports.
type TraceKind uint8

const (
	TraceDial        TraceKind = iota + 1 // a dial started (Detail: target, or gossip and why this peer)
	TraceBusy                             // the dialled peer was at its limit and referred us (Detail: records referred)
	TraceFailed                           // a dial or handshake failed (Detail: the error)
	TraceEstablished                      // a connection was established (Detail: inbound or outbound)
	TraceClosed                           // an established connection ended (Detail: the error, if any)
	TraceRefused                          // we refused an inbound connection at our limit
	TracePass                             // a pass of gossip dials that had candidates (Detail: counts)
	TraceWait                             // a target waits before its next dial (Detail: how long)
	TraceShed                             // we closed a connection to make room (Detail: for whom)
)

func (k TraceKind) String() string {
	switch k {
	case TraceDial:
		return "dial"
	case TraceBusy:
		return "busy"
	case TraceFailed:
		return "failed"
	case TraceEstablished:
		return "established"
	case TraceClosed:
		return "closed"
	case TraceRefused:
		return "refused"
	case TracePass:
		return "pass"
	case TraceWait:
		return "wait"
	case TraceShed:
		return "shed"
	}
	return fmt.Sprintf("trace(%d)", uint8(k))
}

// TraceEvent is one step Config.Trace receives.
type TraceEvent struct {
	At     time.Time
	Kind   TraceKind
	Peer   key.Public // zero when not known (a target's dial before its handshake)
	Addr   string     // the address dialled or connected from, if any
	Detail string
}

// trace hands ev to Config.Trace, if set. It may be called with r.mu
// held: Trace must return quickly and must not call the Router.
func (r *Router) trace(kind TraceKind, peer key.Public, addr string, detail string) {
	if r.cfg.Trace == nil {
		return
	}
	r.cfg.Trace(TraceEvent{At: time.Now(), Kind: kind, Peer: peer, Addr: addr, Detail: detail})
}

// tracing reports whether Config.Trace is set: callers skip formatting
// details nobody reads.
func (r *Router) tracing() bool { return r.cfg.Trace != nil }

func addrString(ap netip.AddrPort) string {
	if !ap.IsValid() {
		return ""
	}
	return ap.String()
}
