package discovery

import (
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// The record table: merge, flooding, reachability and expiry. Everything here
// runs with Router.mu held.

// bumpSelfLocked gives our record a new version and stores it in the table:
// the current time in unix nanoseconds, or one more than the last version if
// the clock has not moved past it.
func (r *Router) bumpSelfLocked() {
	v := uint64(r.now().UnixNano())
	if v <= r.selfRec.Version {
		v = r.selfRec.Version + 1
	}
	r.selfRec.Version = v
	r.selfRec.Sign(r.priv)
	e := r.recs[r.self]
	e.rec = r.selfRec
	e.rec.Attached = slices.Clone(r.selfRec.Attached)
	e.rec.Neighbors = slices.Clone(r.selfRec.Neighbors)
	r.graphSetLocked(r.self)
}

// graphSetLocked hands k's entry as the table holds it now (none: the
// peer was forgotten) to the route graph, which notes the edges it
// changes for the next refresh of the routes (reroute.go). Every change
// of r.recs goes through here.
func (r *Router) graphSetLocked(k key.Public) {
	r.viewGen++
	e := r.recs[k]
	if e == nil {
		r.graph.remove(k)
		r.seenDirty = true
		return
	}
	r.summedLocked(k, e)
	if _, nb := r.graph.set(k, &e.rec); nb {
		r.seenDirty = true // where neighbours are seen may have moved
	}
}

// copySelf returns a copy of our record that does not alias selfRec.
func (r *Router) copySelf() *Record {
	rec := r.selfRec
	rec.Attached = slices.Clone(rec.Attached)
	rec.Neighbors = slices.Clone(rec.Neighbors)
	return &rec
}

// selfNeighborsChangedLocked publishes our neighbor list, rebuilt from the
// active connections, selfPublishDelay from now: the connections a peer
// makes or loses together (joining, a partition) go out as one new version
// of its record, not one each, for a flood of every version reaches every
// peer.
func (r *Router) selfNeighborsChangedLocked() {
	if r.publishPending || r.closed {
		return
	}
	r.publishPending = true
	time.AfterFunc(r.tun.selfPublishDelay, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.publishPending && !r.closed {
			r.publishNeighborsLocked()
		}
	})
}

// publishNeighborsLocked rebuilds our neighbor list from the active
// connections and publishes a new version of our record to everyone.
func (r *Router) publishNeighborsLocked() {
	r.publishPending = false
	nb := make([]Neighbor, 0, len(r.active))
	for k, c := range r.active {
		nb = append(nb, Neighbor{Key: k, IP: c.remote.Addr(), Established: true})
	}
	slices.SortFunc(nb, func(a, b Neighbor) int { return cmpKey(a.Key, b.Key) })
	r.selfRec.Neighbors = nb
	r.bumpSelfLocked()
	r.recomputeLocked()
	r.floodLocked(nil, []*Record{r.copySelf()})
	r.nudge()
}

// applyRecords merges records received on c (nil: a referral, readReferral)
// like applyRecordsLocked, but checks signatures outside the router's lock:
// a new connection's full state or a flood brings many new records, and
// one verification each under the lock would stall every other connection
// (in simulation at 60 peers, long enough for handshakes to time out).
func (r *Router) applyRecords(c *conn, recs []Record) {
	r.mu.Lock()
	if r.closed || c != nil && r.active[c.peer] != c {
		r.mu.Unlock()
		return
	}
	var check []int
	for i := range recs {
		if r.wantsLocked(&recs[i]) {
			check = append(check, i)
		}
	}
	r.mu.Unlock()
	verified := make([]sigCheck, len(recs))
	for _, i := range check {
		verified[i] = sigBad
		if r.verified(&recs[i]) {
			verified[i] = sigGood
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || c != nil && r.active[c.peer] != c {
		return
	}
	r.mergeRecordsLocked(c, recs, verified)
}

// wantsLocked reports whether rec would change our table if its signature
// checks.
func (r *Router) wantsLocked(rec *Record) bool {
	if rec.Version > uint64(r.now().Add(MaxVersionAhead).UnixNano()) {
		return false // dropped and counted by mergeRecordsLocked
	}
	if rec.Key == r.self {
		return rec.Version > r.selfRec.Version
	}
	if rec.Version == 0 || r.isEvictedLocked(rec.Key) {
		return false
	}
	if r.tombstonedLocked(rec) {
		return false
	}
	e := r.recs[rec.Key]
	return e == nil || rec.Version > e.rec.Version
}

// tombstonedLocked reports whether rec is a version of an expired peer
// that we remember and refuse, so a dead peer's record does not come back
// from peers that still hold it. Not while a peer we reach lists the
// owner as an established neighbour: the owner is alive and connected,
// and only our view of it was late. Without that exception a peer
// forgotten after a minute without confirmed edges (a joiner among 200
// on a starved machine) was refused for the tombstones' five minutes if
// its record did not change again: at N=300 one router reached 298 of
// 299 peers until the build gave up.
func (r *Router) tombstonedLocked(rec *Record) bool {
	t, ok := r.tombs[rec.Key]
	if !ok || rec.Version > t.version {
		return false
	}
	// Through the graph's claimers of rec.Key: a pass over every
	// reachable peer here cost each router O(N) per record of a
	// forgotten peer that came back.
	return !r.graph.claimedByReachable(rec.Key, &r.rt)
}

// applyRecordsLocked merges records received from conn from (nil: local) and
// forwards the ones that changed our table to every other connection.
func (r *Router) applyRecordsLocked(from *conn, recs []Record) {
	r.mergeRecordsLocked(from, recs, nil)
}

// sigCheck is the outcome of a signature check done before merging.
type sigCheck int8

const (
	sigUnchecked sigCheck = iota
	sigGood
	sigBad // counted and logged already
)

// mergeRecordsLocked is applyRecordsLocked; verified[i] is what a check of
// recs[i]'s signature found before (nil: none was checked).
func (r *Router) mergeRecordsLocked(from *conn, recs []Record, verified []sigCheck) {
	checked := func(i int) bool {
		if verified != nil && verified[i] != sigUnchecked {
			return verified[i] == sigGood
		}
		return r.verifiedLocked(&recs[i])
	}
	r.ctr.add(CtrRecordsReceived, uint64(len(recs)))
	if from != nil {
		for i := range recs {
			from.heardLocked(recs[i].Key, recs[i].Version) // it holds them: our haves skip them
		}
	}
	var changed []*Record
	limit := uint64(r.now().Add(MaxVersionAhead).UnixNano())
	for i := range recs {
		rec := &recs[i]
		if rec.Version > limit {
			r.ctr.inc(CtrRecordsFuture)
			r.logOnceLocked(slog.LevelWarn, "future:"+rec.Key.Name(), "", "ignoring a peer record whose version is far ahead of our clock (is a clock wrong?)",
				"peer", rec.Key.Name(), "ahead", time.Duration(rec.Version-limit)+MaxVersionAhead)
			continue
		}
		if rec.Key == r.self {
			// A record of ours with a version at least as high as the
			// current one comes from a previous run whose clock was ahead.
			// Jump past it so that our current state wins everywhere.
			if rec.Version > r.selfRec.Version && checked(i) {
				r.selfRec.Version = rec.Version
				r.bumpSelfLocked()
				changed = append(changed, r.copySelf())
				r.log.Info("saw a newer record of ours from a previous run; superseding it", "version", rec.Version)
			}
			continue
		}
		if rec.Version == 0 {
			continue // versions start at a unix time; 0 is never a real record
		}
		if r.isEvictedLocked(rec.Key) {
			r.ctr.inc(CtrRecordsEvicted) // evicted for good: never back in the table
			continue
		}
		if r.tombstonedLocked(rec) {
			continue
		}
		e := r.recs[rec.Key]
		if e != nil && rec.Version <= e.rec.Version {
			continue
		}
		if !checked(i) {
			continue
		}
		if e == nil && len(r.recs) >= MaxPeers {
			r.ctr.inc(CtrRecordsTableFull)
			r.logOnceLocked(slog.LevelWarn, "table", "full", "ignoring records of new peers: the peer table is full", "max", MaxPeers)
			continue
		}
		r.ctr.inc(CtrRecordsApplied)
		if e == nil {
			// Unreachable until its edges are confirmed: a peer with
			// no record has none.
			e = &entry{unreachableSince: r.now()}
			r.recs[rec.Key] = e
			r.unreach[rec.Key] = struct{}{}
			r.log.Info("learned of peer", "peer", rec.Key.Name(), "nickname", rec.Nickname)
		}
		if r.cfg.Shared != nil {
			r.cfg.Shared.intern(rec)
		}
		e.rec = *rec
		r.graphSetLocked(rec.Key)
		r.noteSeenLocked(rec)
		r.gotLocked(rec)
		changed = append(changed, rec)
	}
	if len(changed) == 0 {
		return
	}
	r.dialChangedLocked() // addresses and neighbours, before the routes follow
	r.scheduleRecomputeLocked()
	r.floodLocked(from, changed)
}

// scheduleRecomputeLocked recomputes routes recomputeDelay from now, once
// for however many records arrive meanwhile (a flood brings them one
// message at a time), and then nudges Changes. Peers, NextHop and Route
// recompute at once if one is pending, so their answers are never stale;
// channel forwarding uses the routes as they are until then.
func (r *Router) scheduleRecomputeLocked() {
	if r.recomputePending || r.closed {
		return
	}
	r.recomputePending = true
	time.AfterFunc(r.tun.recomputeDelay, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.recomputePending && !r.closed {
			r.recomputeLocked()
			r.nudge()
		}
	})
}

// freshLocked recomputes the routes if records changed since the last
// computation.
func (r *Router) freshLocked() {
	if r.recomputePending {
		r.recomputeLocked()
		// The pending timer finds nothing left to do: nudge here, or
		// the change would go unannounced.
		r.nudge()
	}
}

// verified checks rec's signature by its owner, counting and logging (once
// per peer) a failure. Only records that would change the table are
// checked, so anti-entropy's repeats cost nothing. Called without r.mu.
func (r *Router) verified(rec *Record) bool {
	if err := r.cfg.Verify(rec.Key, recordDomain, AppendRecord(nil, rec), &rec.Sig); err != nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.badSigLocked(rec)
		return false
	}
	return true
}

// verifiedLocked is verified with r.mu held.
func (r *Router) verifiedLocked(rec *Record) bool {
	if err := r.cfg.Verify(rec.Key, recordDomain, AppendRecord(nil, rec), &rec.Sig); err != nil {
		r.badSigLocked(rec)
		return false
	}
	return true
}

func (r *Router) badSigLocked(rec *Record) {
	r.ctr.inc(CtrRecordsBadSig)
	r.logOnceLocked(slog.LevelWarn, "badsig:"+rec.Key.Name(), "", "dropping a peer record whose signature does not check: a member is forging records",
		"peer", rec.Key.Name())
}

// floodLocked queues recs to every active connection except skip: our
// own record whole, others' as haves to neighbours that know them
// (announce.go).
func (r *Router) floodLocked(skip *conn, recs []*Record) {
	if len(r.active) == 0 || len(recs) == 0 {
		return
	}
	var own, others []*Record
	for _, rec := range recs {
		if rec.Key == r.self {
			own = append(own, rec)
		} else {
			others = append(others, rec)
		}
	}
	var ownMsgs, otherMsgs [][]byte
	if len(own) > 0 {
		ownMsgs = packRecords(own)
	}
	if len(others) > 0 {
		otherMsgs = packRecords(others)
	}
	for _, c := range r.active {
		if c == skip {
			continue
		}
		if len(own) > 0 {
			r.ctr.add(CtrRecordsSent, uint64(len(own)))
			for _, m := range ownMsgs {
				c.queue(m)
			}
		}
		if len(others) > 0 {
			r.announceLocked(c, others, otherMsgs)
		}
	}
}

// allRecordsLocked returns copies of every record we hold, ours first.
func (r *Router) allRecordsLocked() []*Record {
	recs := make([]*Record, 0, len(r.recs))
	recs = append(recs, r.copySelf())
	for k, e := range r.recs {
		if k == r.self || e.rec.Version == 0 {
			continue // version 0: a placeholder made from a hello, not a record
		}
		rec := e.rec
		recs = append(recs, &rec)
	}
	return recs
}

// sendFullStateLocked queues every record we hold to c.
func (r *Router) sendFullStateLocked(c *conn) {
	r.sendRecordsLocked(c, r.allRecordsLocked())
}

// sendRecordsLocked queues recs to c, packed, and counts them.
func (r *Router) sendRecordsLocked(c *conn, recs []*Record) {
	if len(recs) == 0 {
		return
	}
	r.ctr.add(CtrRecordsSent, uint64(len(recs)))
	for _, m := range packRecords(recs) {
		c.queue(m)
	}
}

// recomputeLocked brings the routes to the records' edges and notes when
// each peer became unreachable. Only the edges the changed records touched
// are looked at (reroute.go), and only peers whose reachability flipped:
// a change costs each router the peers it moves, not a pass over all.
func (r *Router) recomputeLocked() {
	r.recomputePending = false
	r.dialChangedLocked()
	if len(r.graph.keys) > 2*len(r.recs)+1024 {
		// Keys of forgotten peers and of neighbours never seen pile
		// up; start over (update does, and refresh then computes the
		// routes in full).
		r.graph.update(func(yield func(key.Public, *Record) bool) {
			for k, e := range r.recs {
				if !yield(k, &e.rec) {
					return
				}
			}
		}, len(r.recs))
	}
	flipped, computed := r.graph.refresh(&r.rt)
	if !computed {
		return
	}
	r.ctr.inc(CtrRoutesComputed)
	r.seenDirty = true
	defer r.retryParkedLocked()
	now := r.now()
	arrived := false
	for _, k := range flipped {
		r.noteReachLocked(k)
		e := r.recs[k]
		if e == nil || k == r.self {
			continue
		}
		if r.rt.reachable(k) {
			arrived = true
			e.unreachableSince = time.Time{}
			delete(r.unreach, k)
			r.log.Info("peer reachable", "peer", k.Name(), "nickname", e.rec.Nickname)
		} else {
			e.unreachableSince = now
			r.unreach[k] = struct{}{}
			r.log.Info("peer unreachable", "peer", k.Name(), "nickname", e.rec.Nickname)
		}
	}
	if arrived {
		r.dialSoonLocked(now)
	}
}

// expireLocked drops peers unreachable for longer than expireAfter, and
// tombstones past tombstoneFor.
func (r *Router) expireLocked(now time.Time) {
	dropped := false
	// While every known peer is reachable there is nothing to expire:
	// no pass over every record each second (the simulation's N routers
	// spent 2.6 % of their CPU on it at 300 peers).
	// And then only the unreachable ones (unreach), not every record:
	// after a leave every router held the gone peer's record for
	// expireAfter, and read all N records each second meanwhile.
	if r.rt.count() < len(r.recs) {
		for k := range r.unreach {
			e := r.recs[k]
			if e == nil || k == r.self || e.unreachableSince.IsZero() || r.active[k] != nil {
				continue
			}
			if now.Sub(e.unreachableSince) < r.tun.expireAfter {
				continue
			}
			r.forgetSummedLocked(k, e)
			delete(r.recs, k)
			delete(r.unreach, k)
			r.graphSetLocked(k)
			delete(r.dials, k)
			r.tombs[k] = tomb{version: e.rec.Version, at: now}
			r.ctr.inc(CtrPeersExpired)
			r.log.Info("forgot unreachable peer", "peer", k.Name(), "nickname", e.rec.Nickname)
			dropped = true
		}
	}
	for k, t := range r.tombs {
		if now.Sub(t.at) > r.tun.tombstoneFor {
			delete(r.tombs, k)
		}
	}
	if dropped {
		r.recomputeLocked()
		r.nudge()
	}
}

// antiEntropyLocked sends our digest to one random active connection,
// which answers with what we lack and sends what it lacks.
func (r *Router) antiEntropyLocked() {
	if len(r.active) == 0 {
		return
	}
	cs := make([]*conn, 0, len(r.active))
	for _, c := range r.active {
		cs = append(cs, c)
	}
	r.ctr.inc(CtrAntiEntropy)
	c := cs[rand.N(len(cs))]
	if c.speaksSummary {
		r.sendSummaryLocked(c, summaryReply)
		return
	}
	r.sendDigestLocked(c, true)
}

// addConnLocked makes c the active connection to its peer, or reports why
// not. Duplicates are resolved the same way on both sides (preferredOver).
func (r *Router) addConnLocked(c *conn) error {
	if r.closed {
		return ErrClosed
	}
	if r.isEvictedLocked(c.peer) {
		r.ctr.inc(CtrConnEvicted)
		return errEvictedPeer
	}
	if old := r.active[c.peer]; old != nil {
		if !c.preferredOver(old, r.self) {
			return errDuplicate
		}
		r.ctr.inc(CtrConnDuplicate)
		r.log.Debug("closing duplicate control connection", "peer", c.peer.Name(), "addr", old.addr)
		delete(r.active, c.peer)
		old.close()
	} else if len(r.active) >= MaxNeighbors || c.target == nil && len(r.active) >= r.cfg.ConnLimit {
		// Only connections the user asked for (targets) go past the
		// limit (connlimit.go), and a peer we do not reach takes the
		// place of one of ours (shedLocked).
		if !c.mayShed || !r.shedLocked(c.peer) {
			return errTooManyConns
		}
	}
	r.active[c.peer] = c
	c.since = r.now()
	r.noteReachLocked(c.peer)
	e := r.recs[c.peer]
	if e == nil {
		// Until its record arrives, show the peer with what its hello said.
		e = &entry{rec: Record{Key: c.peer, Nickname: c.hello.Nickname, Port: c.hello.Port}, unreachableSince: r.now()}
		r.recs[c.peer] = e
		r.unreach[c.peer] = struct{}{}
		r.graphSetLocked(c.peer)
	}
	e.hello = c.hello
	r.ctr.inc(CtrEstablished)
	r.log.Info("control connection established", "peer", c.peer.Name(), "nickname", c.hello.Nickname, "addr", c.addr, "outbound", c.outbound)
	r.selfNeighborsChangedLocked()
	r.sendDigestLocked(c, false)
	r.sendSummaryLocked(c, 0)                 // we know summaries (summary.go)
	c.queue(appendFeatures(nil, ourFeatures)) // and multicast (multicast.go)
	return nil
}

// removeConnLocked forgets c; if it was the active connection to its peer,
// our record changes and targets waiting on that peer are woken.
func (r *Router) removeConnLocked(c *conn, why error) {
	delete(r.conns, c)
	if r.active[c.peer] != c {
		return
	}
	delete(r.active, c.peer)
	r.noteReachLocked(c.peer)
	r.ctr.inc(CtrConnClosed)
	attrs := []any{"peer", c.peer.Name(), "nickname", c.hello.Nickname, "addr", c.addr}
	if why != nil {
		attrs = append(attrs, "err", why.Error())
	}
	r.log.Info("control connection closed", attrs...)
	for _, t := range r.targets {
		if t.peer == c.peer {
			t.wakeUp()
		}
	}
	if !r.closed {
		r.selfNeighborsChangedLocked()
	}
}
