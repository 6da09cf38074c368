package discovery

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Eviction: any member may remove another from the network for good. The
// evictor signs a record {peer, evictor, time}; it travels on the internal
// "evict" channel when made and in full every anti-entropy round, and each
// member keeps every record it has verified (Config.SaveEvictions).
//
// Which records count is a function of the set alone, so every member that
// holds the same records agrees: records are taken in order of (time,
// evictor, peer), and a record counts unless its evictor was evicted by a
// record that counted before it. So a member evicted at t cannot evict
// anyone with a later record, and two members evicting each other at once
// leave the earlier record standing.
//
// An evicted peer is refused by every member: its control connections
// (after the handshake, before the hello: control_connection_evicted), its
// join attempts (control_join_evicted), its records (gossip_records_evicted,
// and its entry is removed and never comes back), and channel messages it
// originated or that are addressed to it (gossip_channel_evicted). The
// daemon removes its WireGuard peer (it is no longer in the table) and
// reclaims its address space with rmpeer.
//
// An evict message on the channel:
//
//	+-------+---------+------------------------------------------------+
//	| ver 1 | count 2 | count × ( peer 32 | evictor 32 | time 8 | sig 64 ) |
//	+-------+---------+------------------------------------------------+
//
// time is Unix nanoseconds; sig is the evictor's (key.Sign, domain
// "weavewg evict v1") over network ID 8 | peer | evictor | time, so a
// record of one network means nothing in another.

const (
	evictChannel    = "evict"
	evictMsgVersion = 1
	evictRecordLen  = 2*key.Len + 8 + key.SigLen
	evictDomain     = "weavewg evict v1"
	// MaxEvictions bounds the records kept (they are never forgotten).
	MaxEvictions = 4096
	// evictCloseAfter is how long the connection of a peer just evicted
	// stays open for the record telling it so to be written; whatever
	// it sends meanwhile is dropped as an evicted peer's.
	evictCloseAfter = 500 * time.Millisecond
	// maxEvictInMsg keeps one message within a channel payload.
	maxEvictInMsg = (MaxChannelPayload - 3) / evictRecordLen
)

// EvictRecord says that Evictor evicted Peer at Time.
type EvictRecord struct {
	Peer    key.Public
	Evictor key.Public
	Time    time.Time
	Sig     key.Signature
}

// Errors of Evict.
var (
	ErrEvictSelf    = errors.New("a peer cannot evict itself; run 'weavewg reset' on it, or 'weavewg evict' on another member")
	ErrEvicted      = errors.New("the peer was evicted from the network")
	ErrSelfEvicted  = errors.New("this peer was evicted from the network; it can no longer change anything ('weavewg reset' to leave)")
	errEvictedPeer  = errors.New("peer was evicted from this network")
	errBadEvictFmt  = errors.New("discovery: malformed evict message")
	errEvictVersion = errors.New("discovery: unknown evict message version")
)

func (e *EvictRecord) signedBytes(network NetworkID) []byte {
	b := make([]byte, 0, 8+2*key.Len+8)
	b = append(b, network[:]...)
	b = append(b, e.Peer[:]...)
	b = append(b, e.Evictor[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixNano()))
}

// Sign sets e.Sig; priv must be the key of e.Evictor.
func (e *EvictRecord) Sign(priv key.Private, network NetworkID) {
	e.Sig = key.Sign(priv, evictDomain, e.signedBytes(network))
}

// Verify checks e.Sig against e.Evictor.
func (e *EvictRecord) Verify(network NetworkID) error {
	return key.Verify(e.Evictor, evictDomain, e.signedBytes(network), &e.Sig)
}

// AppendEvictMessage appends an evict message holding recs (at most
// maxEvictInMsg of them) to b.
func AppendEvictMessage(b []byte, recs []EvictRecord) []byte {
	b = append(b, evictMsgVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(recs)))
	for _, e := range recs {
		b = append(b, e.Peer[:]...)
		b = append(b, e.Evictor[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixNano()))
		b = append(b, e.Sig[:]...)
	}
	return b
}

// ParseEvictMessage parses a whole evict message. Signatures are not
// checked here.
func ParseEvictMessage(b []byte) ([]EvictRecord, error) {
	if len(b) < 3 {
		return nil, errShort
	}
	if b[0] != evictMsgVersion {
		return nil, errEvictVersion
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	b = b[3:]
	if n > maxEvictInMsg {
		return nil, errTooMany
	}
	if len(b) != n*evictRecordLen {
		return nil, errBadEvictFmt
	}
	out := make([]EvictRecord, n)
	for i := range out {
		e := &out[i]
		copy(e.Peer[:], b[:key.Len])
		copy(e.Evictor[:], b[key.Len:2*key.Len])
		ns := binary.BigEndian.Uint64(b[2*key.Len:])
		if ns > 1<<62 {
			return nil, errBadEvictFmt
		}
		e.Time = time.Unix(0, int64(ns)).UTC()
		copy(e.Sig[:], b[2*key.Len+8:evictRecordLen])
		b = b[evictRecordLen:]
	}
	return out, nil
}

// verifyEviction checks e's signature through the router's Verifier.
func (r *Router) verifyEviction(e *EvictRecord) error {
	return r.cfg.Verify(e.Evictor, evictDomain, e.signedBytes(r.network), &e.Sig)
}

// evictKey identifies a record: one per (peer, evictor), the earliest kept.
type evictKey struct{ peer, evictor key.Public }

// evictionState is part of Router; every field is guarded by Router.mu.
type evictionState struct {
	evictRecs map[evictKey]EvictRecord
	// evicted is the effective set (effectiveEvictions of evictRecs), by
	// peer, with the record that evicted it.
	evicted map[key.Public]EvictRecord
	evictCh *Channel // constant after New
}

// effectiveEvictions computes which peers the records evict (see the
// package rules above): a pure function of the set.
func effectiveEvictions(recs map[evictKey]EvictRecord) map[key.Public]EvictRecord {
	all := make([]EvictRecord, 0, len(recs))
	for _, e := range recs {
		all = append(all, e)
	}
	slices.SortFunc(all, func(a, b EvictRecord) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		if c := bytes.Compare(a.Evictor[:], b.Evictor[:]); c != 0 {
			return c
		}
		return bytes.Compare(a.Peer[:], b.Peer[:])
	})
	out := map[key.Public]EvictRecord{}
	for _, e := range all {
		if _, gone := out[e.Evictor]; gone {
			continue
		}
		if _, already := out[e.Peer]; !already {
			out[e.Peer] = e
		}
	}
	return out
}

// openEvictions registers the evict channel and loads the saved records.
// Called from New.
func (r *Router) openEvictions() error {
	r.evictRecs = map[evictKey]EvictRecord{}
	for _, e := range r.cfg.Evictions {
		if r.verifyEviction(&e) != nil || e.Peer == e.Evictor {
			continue // not ours to trust (another network's, or damaged)
		}
		r.addEvictionLocked(e)
	}
	r.evicted = effectiveEvictions(r.evictRecs)
	ch, err := r.Channel(evictChannel, r.handleEvict)
	if err != nil {
		return err
	}
	r.evictCh = ch
	return nil
}

// addEvictionLocked keeps e unless an earlier record of the same pair is
// kept; it reports whether the set changed.
func (r *Router) addEvictionLocked(e EvictRecord) bool {
	k := evictKey{e.Peer, e.Evictor}
	if old, ok := r.evictRecs[k]; ok && !e.Time.Before(old.Time) {
		return false
	}
	if _, ok := r.evictRecs[k]; !ok && len(r.evictRecs) >= MaxEvictions {
		return false
	}
	r.evictRecs[k] = e
	return true
}

// isEvictedLocked reports whether k is evicted.
func (r *Router) isEvictedLocked(k key.Public) bool {
	_, ok := r.evicted[k]
	return ok
}

// IsEvicted reports whether k is evicted.
func (r *Router) IsEvicted(k key.Public) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.isEvictedLocked(k)
}

// Evictions returns the effective evictions, oldest first.
func (r *Router) Evictions() []EvictRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]EvictRecord, 0, len(r.evicted))
	for _, e := range r.evicted {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b EvictRecord) int { return a.Time.Compare(b.Time) })
	return out
}

func (r *Router) evictRecordsLocked() []EvictRecord {
	out := make([]EvictRecord, 0, len(r.evictRecs))
	for _, e := range r.evictRecs {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b EvictRecord) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return bytes.Compare(a.Peer[:], b.Peer[:])
	})
	return out
}

// Evict evicts peer from the network: the record is signed by this peer,
// applied here at once, saved and broadcast.
func (r *Router) Evict(peer key.Public) (EvictRecord, error) {
	if peer == r.self {
		return EvictRecord{}, ErrEvictSelf
	}
	e := EvictRecord{Peer: peer, Evictor: r.self, Time: r.now().UTC()}
	e.Sign(r.priv, r.network)
	r.mu.Lock()
	if r.isEvictedLocked(r.self) {
		r.mu.Unlock()
		return EvictRecord{}, ErrSelfEvicted
	}
	if cur, ok := r.evicted[peer]; ok {
		r.mu.Unlock()
		return cur, fmt.Errorf("%w already (by %s at %s)", ErrEvicted, cur.Evictor.Name(), cur.Time.Format(time.RFC3339))
	}
	r.addEvictionLocked(e)
	r.applyEvictionsLocked()
	r.mu.Unlock()
	r.saveEvictions()
	r.broadcastEvictions([]EvictRecord{e})
	return e, nil
}

func (r *Router) handleEvict(from key.Public, msg []byte) {
	recs, err := ParseEvictMessage(msg)
	if err != nil {
		r.ctr.inc(CtrMessageMalformed)
		r.logOnce(slog.LevelWarn, "evict:"+from.String(), "malformed", "ignoring a malformed evict message", "peer", from.Name(), "err", err.Error())
		return
	}
	var fresh []EvictRecord
	r.mu.Lock()
	for _, e := range recs {
		k := evictKey{e.Peer, e.Evictor}
		if old, ok := r.evictRecs[k]; ok && !e.Time.Before(old.Time) {
			continue // known: anti-entropy's repeats cost no signature check
		}
		if e.Peer == e.Evictor || e.Time.After(r.now().Add(MaxVersionAhead)) || r.verifyEviction(&e) != nil {
			r.ctr.inc(CtrEvictBad)
			r.logOnceLocked(slog.LevelWarn, "evictbad:"+e.Evictor.String(), "",
				"dropping an eviction record that does not check (bad signature, self-eviction or far-future time)",
				"claimed_evictor", e.Evictor.Name(), "via", from.Name())
			continue
		}
		if r.addEvictionLocked(e) {
			fresh = append(fresh, e)
		}
	}
	if len(fresh) > 0 {
		r.applyEvictionsLocked()
	}
	r.mu.Unlock()
	if len(fresh) > 0 {
		r.saveEvictions()
		r.broadcastEvictions(fresh)
	}
}

// applyEvictionsLocked recomputes the effective set and acts on peers newly
// evicted: their connections close, their records go for good.
func (r *Router) applyEvictionsLocked() {
	old := r.evicted
	r.evicted = effectiveEvictions(r.evictRecs)
	changed := false
	for k, e := range r.evicted {
		if _, was := old[k]; was {
			continue
		}
		changed = true
		r.ctr.inc(CtrPeersEvicted)
		if k == r.self {
			r.log.Error("this peer was evicted from the network: every member now refuses it ('weavewg reset' to leave)",
				"evictor", e.Evictor.Name(), "at", e.Time.Format(time.RFC3339))
			continue
		}
		nick := ""
		if en := r.recs[k]; en != nil {
			nick = en.rec.Nickname
		}
		r.log.Warn("peer evicted: refusing it from now on", "peer", k.Name(), "nickname", nick, "evictor", e.Evictor.Name())
		for c := range r.conns {
			if c.peer == k && r.active[k] != c {
				c.close()
			}
		}
		if c := r.active[k]; c != nil {
			// Tell it why before closing (its readLoop then ends and
			// removes it): the evicted host logs and shows its eviction.
			m := ChannelMessage{Name: evictChannel, Src: r.self, Dst: k, Hops: 1, Payload: AppendEvictMessage(nil, []EvictRecord{e})}
			m.Sign(r.priv)
			if b, err := AppendChannelMessage(nil, m); err == nil {
				c.queue(b)
				time.AfterFunc(evictCloseAfter, c.close)
			} else {
				c.close()
			}
		}
		if en := r.recs[k]; en != nil {
			r.forgetSummedLocked(k, en)
		}
		delete(r.recs, k)
		delete(r.unreach, k)
		r.graphSetLocked(k)
		delete(r.dials, k)
		delete(r.tombs, k)
	}
	// A peer whose only evictor was itself evicted earlier comes back to
	// nothing: its record was removed and returns with its next version.
	if changed || len(old) != len(r.evicted) {
		r.recomputeLocked()
		r.nudge()
	}
}

func (r *Router) saveEvictions() {
	if r.cfg.SaveEvictions == nil {
		return
	}
	r.mu.Lock()
	recs := r.evictRecordsLocked()
	r.mu.Unlock()
	if err := r.cfg.SaveEvictions(recs); err != nil {
		r.logOnce(slog.LevelError, "evict:save", err.Error(), "saving the eviction records failed", "err", err.Error())
	}
}

// broadcastEvictions sends recs to every reachable peer; nil is the
// anti-entropy round: every record to one random reachable peer (as
// broadcastTokens does, for the same reason).
func (r *Router) broadcastEvictions(recs []EvictRecord) {
	send := func(m []byte) { r.evictCh.Broadcast(m) }
	if recs == nil {
		r.mu.Lock()
		recs = r.evictRecordsLocked()
		r.mu.Unlock()
		if len(recs) == 0 {
			return
		}
		to, ok := r.randomReachable()
		if !ok {
			return
		}
		send = func(m []byte) { r.evictCh.Send(to, m) }
	}
	if r.evictCh == nil {
		return
	}
	for len(recs) > 0 {
		n := min(len(recs), maxEvictInMsg)
		send(AppendEvictMessage(nil, recs[:n]))
		recs = recs[n:]
	}
}
