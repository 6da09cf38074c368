package discovery

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Connection limit (--conn-limit, Config.ConnLimit).
//
// A peer holds at most ConnLimit control connections; connections a user
// asked for (Connect targets) are dialled whatever the count, everything
// else is refused beyond it. Gossip dials aim lower, at half the limit
// (connWant): a peer that has fewer connections than that dials peers it
// learned through gossip; a peer accepts until the full limit. Since no
// peer dials past connWant, the edges number at most N·connWant, the mean
// degree is at most ConnLimit, and a newcomer always finds peers with room
// (each record lists its owner's neighbours, so full peers are not asked;
// a joiner, which reaches nobody, asks those of the records it was
// referred to that have room first, and at most maxFullDials full ones a
// pass).
// Meshes of up to connWant+1 peers stay full meshes, as before the limit.
//
// Which peers: for a peer that reaches others, those it reaches first and
// at most bridgeCount unreachable ones a pass (a part cut off fills from
// its own peers; the bridges join the parts); for one that reaches
// nobody (a joiner), unreachable ones with room first; each peer in its
// own pseudo-random order of the others (a hash of both keys), so
// the graph is a random graph of minimum degree connWant: connected with
// overwhelming probability, diameter about log N / log connWant (2-3 hops
// at 1,000 peers and the default). Records list at most ConnLimit
// neighbours, so a record costs O(ConnLimit), not O(N), and one peer's
// change floods O(N·ConnLimit) record messages in total.
//
// Bridges: a peer at connWant or more does not dial, so two parts of a
// mesh that were cut apart and can reach each other again would stay apart.
// While known peers are unreachable, the bridgeCount peers of each part
// that come first in an order every peer computes alike (a hash of the key)
// and have room dial bridgeCount of the unreachable peers each (failed ones
// retried at most every bridgeBackoffMax), so a heal is repaired by a few
// connections, not by every peer dialling every peer it lost.
//
// Shedding: a peer at its limit dialled by a peer it does not reach (a
// joiner, which reaches nobody yet, or the far side of a partition)
// takes it, and closes instead the connection of a neighbour of its own
// that holds at least connWant+2 connections and that it still reaches
// without that connection (shedLocked): an edge P–Q becomes P–J, and Q,
// one under its limit now, is a peer with room for J's next dials (the
// edge splitting that grows a random regular graph while keeping it
// random). Without it a joiner whose bootstrap peer was full searched the
// mesh for room one referral at a time, two full peers a tick: after a
// build the peers with room are the last joiners, the neighbours of a
// full peer are full, and the 1,000th join in simulation was refused 49
// times over 23 s before its first connection (simbench -timeline
// showed the chain at N=300 with a limit of 6: 16 refusals, 7.8 s). No
// peer goes past its limit, Q keeps at least connWant (it does not dial)
// even if two peers shed it at once, and a peer sheds at most one
// connection a tick, so a stream of strangers cannot churn its
// connections faster. A joiner holding a connection but reaching nobody
// yet does not dial until it does (firstReachPendingLocked): the peers
// it would dial do not know it yet, and would shed for it too.
//
// A peer at its limit otherwise still completes the handshake of an inbound
// connection, then answers with msgBusy instead of a hello, followed by
// its own record and its neighbours' (referralLocked), and closes. The
// dialler dials those neighbours (a full one refers it on to its own)
// and learns the rest of the mesh from the first that takes it; its target to the full peer counts as
// satisfied while that peer is reachable and the dialler holds connWant
// connections or the peer is as full as when it refused, so `join` with
// one bootstrap endpoint works at any size and is not redialled for good.

// DefaultConnLimit is the default of --conn-limit. Thirty keeps meshes of
// up to 16 peers full meshes (every pair direct, as the data plane's relay
// and STUN choices prefer) and makes each peer hold 15-30 connections in a
// larger mesh: 1,000 peers are 2-3 hops apart, a record is at most 1.5 KB,
// and one change costs about 20 record messages per peer (bench-scale).
const DefaultConnLimit = 30

const (
	// bridgeCount is how many peers of each part dial across, and how
	// many peers each of them dials.
	bridgeCount = 2
	// bridgeBackoffMax caps the backoff of dials to unreachable peers:
	// a partition's heal waits for the next of them.
	bridgeBackoffMax = 4 * time.Second
	// maxFullDials bounds the dials to unreachable peers whose records
	// list ConnLimit neighbours in one pass of gossip dials.
	maxFullDials = 2
	// msgBusy replaces the hello of a peer at its connection limit; the
	// records messages that follow hold its record and its neighbours'.
	msgBusy byte = 5
)

// errShed is why a peer at its limit closed a connection of its own: to
// take one from a peer it did not reach.
var errShed = errors.New("closed to make room for a peer that reached nobody (--conn-limit)")

// errBusy is what a dialler gets from a peer at its connection limit.
var errBusy = errors.New("peer is at its connection limit (--conn-limit); learned its neighbours from it")

// dialRecheck bounds how long gossip dials may skip their pass over
// every record while nothing they read changed (dialIdle): a change the
// generation does not see would wait at most this long (none is known:
// records, routes, connections, dials' ends, targets forgotten and
// referrals' addresses all bump it). It was 10 s: in a still mesh a
// peer under half its limit whose candidates are all full (many late
// joiners: the mean degree nears the limit) read every record every
// 10 s, 18 % of the idle CPU of 100 simulated routers (Nov 30).
const dialRecheck = time.Minute

// dialIdle is the outcome of a pass over every record that started no
// dial: at generation gen nothing was dialable before until (the first
// backoff to end, or dialRecheck). A peer under half its limit whose
// candidates are all full, failing or backing off read every record
// each second: O(N) per such peer per second, at 1,000 simulated peers a
// sixth of them (issue 18).
type dialIdle struct {
	gen   uint64
	until time.Time
}

// dialChangedLocked notes a change that may give gossip dials a new
// candidate: records, routes, our connections or a dial's outcome.
func (r *Router) dialChangedLocked() { r.dialGen++ }

// dialSoonLocked runs a pass of gossip dials now, off the maintenance
// tick, when this peer is under half its limit and peers just became
// reachable (a joiner's first connection brought it the mesh), at most
// once a tick. A joiner waited for its next tick (0-1 s) to dial the
// rest of its connections, so the record versions a join sets off came
// in waves up to a second apart, each flooded through the mesh with its
// own haves, wants and records; dialled at once, its peers' new versions
// follow the first within a few hundred milliseconds and travel together
// (haveDelay).
func (r *Router) dialSoonLocked(now time.Time) {
	if r.dialSoon || r.closed || len(r.active) >= r.connWant() || now.Sub(r.lastDialSoon) < r.tun.tick {
		return
	}
	r.dialSoon = true
	time.AfterFunc(0, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.dialSoon = false
		if r.closed {
			return
		}
		now := r.now()
		r.lastDialSoon = now
		r.gossipDialsLocked(now)
	})
}

// firstReachWait bounds how long a peer that holds connections but
// reaches nobody through them yet waits for their records before it
// dials on its own (firstReachPendingLocked).
const firstReachWait = 5 * time.Second

// firstReachPendingLocked reports whether we hold a connection made less
// than firstReachWait ago and reach nobody yet: a joiner just taken by
// its first peer, whose records (and that peer's, listing us) are on
// their way. Its dials would go to peers it thinks unreachable (full ones
// too, as a bridge), each of which, not knowing it yet, would shed a
// connection of its own for it: at limit 2 a joiner's first peer and its
// second both shed the same neighbour, which then reached nobody and got
// back in by a shed of its own. dialSoonLocked dials as soon as the mesh
// is reachable.
func (r *Router) firstReachPendingLocked(now time.Time) bool {
	if len(r.active) == 0 || r.rt.count() > 1 {
		return false
	}
	for _, c := range r.active {
		if now.Sub(c.since) < firstReachWait {
			return true
		}
	}
	return false
}

// connWant is how many connections gossip dials aim for.
func (r *Router) connWant() int { return (r.cfg.ConnLimit + 1) / 2 }

// fullLocked reports whether an inbound connection from peer would exceed
// the limit (a second connection to a connected peer is a duplicate,
// resolved elsewhere).
func (r *Router) fullLocked(peer key.Public) bool {
	return r.active[peer] == nil && len(r.active) >= r.cfg.ConnLimit
}

// shedCandidateLocked returns the neighbour whose connection we would
// close to take an inbound connection from dialler at our limit, if we
// may: dialler is a peer we do not reach (a joiner, or the far side of a
// partition: those we reach find peers with room through the mesh, and
// are referred), we hold exactly ConnLimit connections, we shed none in
// the last tick, and a neighbour qualifies: not a connection we dialled
// as a target (the user asked for it), holding connWant+2 connections or
// more by its record (it keeps connWant and does not dial even if a
// second peer, whose view lags ours, sheds it at the same moment), and
// still linked to us by another path (the mesh is not cut). Of those,
// the one with the most connections, then by our own dial order. A
// joiner, with fewer, is never shed for the next.
func (r *Router) shedCandidateLocked(dialler key.Public, now time.Time) (key.Public, bool) {
	if len(r.active) != r.cfg.ConnLimit || r.active[dialler] != nil || now.Sub(r.lastShed) < r.tun.tick {
		return key.Public{}, false
	}
	r.freshLocked()
	if r.rt.reachable(dialler) {
		return key.Public{}, false
	}
	type cand struct {
		k      key.Public
		degree int
	}
	var cands []cand
	for k, c := range r.active {
		if c.target != nil {
			continue
		}
		if d := r.graph.degree(k); d > r.connWant()+1 {
			cands = append(cands, cand{k, d})
		}
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(b.degree, a.degree); c != 0 {
			return c
		}
		return cmp.Compare(dialRank(r.self, a.k), dialRank(r.self, b.k))
	})
	// Each check is a search of the graph from the neighbour; in a
	// random graph of degree connWant or more the first nearly always
	// passes, so a few are tried, not all.
	for _, c := range cands[:min(len(cands), 3)] {
		if r.graph.linkedWithout(r.self, c.k) {
			return c.k, true
		}
	}
	return key.Public{}, false
}

// shedLocked closes the connection shedCandidateLocked picks, to take one
// from dialler in its place, and reports whether it did.
func (r *Router) shedLocked(dialler key.Public) bool {
	now := r.now()
	k, ok := r.shedCandidateLocked(dialler, now)
	if !ok {
		return false
	}
	old := r.active[k]
	r.lastShed = now
	r.ctr.inc(CtrConnShed)
	r.log.Info("closing a control connection to take a peer we do not reach (at the connection limit)", "peer", k.Name(), "nickname", old.hello.Nickname, "for", dialler.Name())
	if r.tracing() {
		r.trace(TraceShed, k, old.addr, "for "+dialler.Name())
	}
	r.removeConnLocked(old, errShed)
	old.close()
	return true
}

// dialRank is self's pseudo-random preference for dialling k: lower first.
func dialRank(self, k key.Public) uint64 {
	return splitmix64(binary.BigEndian.Uint64(self[:8])*0x9e3779b97f4a7c15 ^ binary.BigEndian.Uint64(k[:8]))
}

// bridgeRank orders peers the same way on every peer.
func bridgeRank(k key.Public) uint64 { return splitmix64(binary.BigEndian.Uint64(k[8:16])) }

// dialCandidate is a peer gossip may dial.
type dialCandidate struct {
	k           key.Public
	unreachable bool
	full        bool // unreachable, and its record lists ConnLimit neighbours
	rank        uint64
}

// gossipDialsLocked starts the dials the limit allows: towards connWant
// connections, and across a partition when this peer is one of its part's
// bridges.
func (r *Router) gossipDialsLocked(now time.Time) {
	if len(r.active) >= r.connWant() && r.rt.count() == len(r.recs) {
		return // nothing to dial, nobody to bridge to: skip the pass over every record
	}
	if r.dialIdle.gen == r.dialGen && now.Before(r.dialIdle.until) {
		return // the last pass found nothing to start, and nothing it read has changed since
	}
	if r.firstReachPendingLocked(now) {
		return // our first connection brings the mesh in a moment (dialSoonLocked)
	}
	r.dialPasses++
	idle := dialIdle{gen: r.dialGen, until: now.Add(dialRecheck)}
	r.dialIdle = dialIdle{} // unless this pass ends with nothing to start
	covered := map[key.Public]bool{}
	for _, t := range r.targets {
		if !t.peer.IsZero() {
			covered[t.peer] = true
		}
	}
	// Dials not yet established: a gossip dial stays in flight for its
	// connection's life, which len(r.active) counts already. Counted
	// twice, a peer some of whose first dials failed stopped dialling
	// below connWant, and passed over every record every tick (a
	// quarter of the idle CPU of 300 simulated routers).
	inFlight := 0
	for k, d := range r.dials {
		if d.inFlight {
			if r.active[k] == nil {
				inFlight++
			}
		} else if r.active[k] != nil || r.recs[k] == nil {
			delete(r.dials, k)
		}
	}
	var cands []dialCandidate
	unreachable := 0
	consider := func(k key.Public, e *entry) {
		if k == r.self || covered[k] || r.active[k] != nil || r.isEvictedLocked(k) {
			return
		}
		if d := r.dials[k]; d != nil && (d.inFlight || now.Before(d.next)) {
			if !d.inFlight && d.next.Before(idle.until) {
				idle.until = d.next // an in-flight dial's end bumps dialGen
			}
			return
		}
		reach := r.rt.reachable(k)
		if reach && r.graph.degree(k) >= r.cfg.ConnLimit {
			return // full: it would refuse
		}
		if !e.lastIP.IsValid() || e.rec.Port == 0 && e.hello.Port == 0 {
			return // nowhere to dial
		}
		if !reach {
			unreachable++
		}
		// An unreachable peer's record may be stale (a partition cut
		// its connections), so a full one is dialled, but last.
		full := !reach && r.graph.degree(k) >= r.cfg.ConnLimit
		cands = append(cands, dialCandidate{k: k, unreachable: !reach, full: full, rank: dialRank(r.self, k)})
	}
	if len(r.active) < r.connWant() {
		for k, e := range r.recs {
			consider(k, e)
		}
	} else {
		// At connWant only bridges dial, and only to unreachable peers:
		// read those alone (unreach), not every record each second
		// while one peer is unreachable (a leave, for expireAfter).
		for k := range r.unreach {
			if e := r.recs[k]; e != nil {
				consider(k, e)
			}
		}
	}
	if len(cands) == 0 {
		r.dialIdle = idle
		return
	}
	room := r.connWant() - len(r.active) - inFlight
	bridging := false
	if room <= 0 {
		if unreachable == 0 || !r.isBridgeLocked() {
			return // dials in flight: their ends bump dialGen
		}
		room = min(bridgeCount-inFlight, r.cfg.ConnLimit-len(r.active)-inFlight)
		cands = slices.DeleteFunc(cands, func(c dialCandidate) bool { return !c.unreachable })
		if room <= 0 {
			return
		}
		bridging = true
	}
	// A peer that reaches others (not a joiner, not a peer cut off from
	// everyone) dials the peers it reaches first, and at most
	// bridgeCount unreachable ones a pass with the room they leave.
	// Unreachable peers all came first (they might bridge): after a
	// cut, every peer of a part that had lost connections dialled the
	// other part's peers first, room-many a tick, each dial failing,
	// and only after hundreds of them the peers of its own part. It sat
	// under connWant for the partition's first tens of seconds, and a
	// heal that came before its part refilled made those connections
	// then, each a new version of two records flooded through the whole
	// healed mesh (issue 18: at N=300 the part of 30 cut off made 57
	// connections among itself during the heal, and 53 across, where
	// the bridges made 4; a build with shedding leaves more peers with
	// room, so more dials across came first). The bridges (below) are
	// what joins two parts.
	//
	// Then peers whose dials failed go last (a cut-off or dead peer is
	// not tried before every other); otherwise unreachable ones first
	// (a joiner, a peer cut off from everyone: every candidate is
	// unreachable), each peer in its own order; bridges all in one
	// order, so that a heal needs few new connections. Among
	// unreachable peers, those whose records list ConnLimit neighbours
	// go last: a joiner reaches nobody, so every record a full
	// bootstrap peer referred it to is unreachable, and it dialled its
	// pick of them, full or not, each full one a refused handshake and
	// a referral of 30 records more (105 refusals for the 1,000th join
	// in simulation, 7 for the 100th; lead's run of fc682d6).
	reachSome := r.rt.count() > 1
	slices.SortFunc(cands, func(a, b dialCandidate) int {
		if reachSome && !bridging && a.unreachable != b.unreachable {
			if b.unreachable {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(r.dialFailures(a.k), r.dialFailures(b.k)); c != 0 {
			return c
		}
		if bridging {
			return cmp.Compare(bridgeRank(a.k), bridgeRank(b.k))
		}
		if a.unreachable != b.unreachable {
			if a.unreachable {
				return -1
			}
			return 1
		}
		if a.full != b.full {
			if b.full {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.rank, b.rank)
	})
	started, fullDials, unreachDials := 0, 0, 0
	if r.tracing() {
		defer func() {
			r.trace(TracePass, key.Public{}, "", fmt.Sprintf("%d candidates (%d unreachable), room %d, %d in flight, started %d (%d to full peers), bridging %v", len(cands), unreachable, room, inFlight, started, fullDials, bridging))
		}()
	}
	for _, c := range cands {
		if started >= room {
			break
		}
		// Each refusal refers us to the full peer's neighbours: two at
		// a time find those with room, where a pass of connWant dials
		// to full peers came back as that many refusals.
		countFull := c.full && !bridging
		countUnreach := c.unreachable && !bridging && reachSome
		if countFull && fullDials >= maxFullDials || countUnreach && unreachDials >= bridgeCount {
			continue
		}
		if countFull {
			fullDials++
		}
		if countUnreach {
			unreachDials++
		}
		started++
		e := r.recs[c.k]
		port := e.rec.Port
		if port == 0 {
			port = e.hello.Port
		}
		ep := netip.AddrPortFrom(e.lastIP, port)
		d := r.dials[c.k]
		if d == nil {
			d = &gossipDial{backoff: r.tun.backoffMin}
			r.dials[c.k] = d
		}
		d.inFlight = true
		d.bridge = c.unreachable
		if r.tracing() {
			r.trace(TraceDial, c.k, ep.String(), fmt.Sprintf("gossip: unreachable %v, full %v, degree %d, failures %d, bridging %v, holding %d", c.unreachable, c.full, r.graph.degree(c.k), r.dialFailures(c.k), bridging, len(r.active)))
		}
		r.wg.Add(1)
		go r.gossipDial(c.k, ep)
	}
}

// isBridgeLocked reports whether this peer is one of the bridgeCount peers
// of its part (the peers reachable from it, itself included) that come
// first by bridgeRank among those with room for another connection.
func (r *Router) isBridgeLocked() bool {
	if len(r.active) >= r.cfg.ConnLimit {
		return false
	}
	mine := bridgeRank(r.self)
	ahead := 0
	for k := range r.rt.others() {
		e := r.recs[k]
		if e == nil || r.graph.degree(k) >= r.cfg.ConnLimit {
			continue
		}
		if b := bridgeRank(k); b < mine || b == mine && k.Less(r.self) {
			ahead++
			if ahead >= bridgeCount {
				return false
			}
		}
	}
	return true
}

// dialFailures is how far the gossip dials of k have backed off: 0 if
// they never failed.
func (r *Router) dialFailures(k key.Public) int {
	d := r.dials[k]
	if d == nil {
		return 0
	}
	n := 0
	for b := d.backoff; b > r.tun.backoffMin; b /= 2 {
		n++
	}
	return n
}
