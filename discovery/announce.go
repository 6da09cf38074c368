package discovery

import (
	"cmp"
	"encoding/binary"
	"slices"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Announcements: a record that is new to us is forwarded to our other
// neighbours as a have (its key and version, 40 bytes), and a neighbour
// that lacks it asks for it with a want; our own record still goes out
// whole. A flood of whole records delivered each version about once per
// edge: every peer received each record from nearly every neighbour, ~15
// copies of up to 1.5 KB at the default --conn-limit, of which it used one
// (at 60 simulated peers one join cost 3,504 records received for 240
// taken). With haves a peer receives a record about once, and a have from
// each neighbour.
//
// Have and want messages (a peer that sent us a digest knows them; a
// legacy peer gets whole records):
//
//	+------------------+-----------+-----------------------------------+
//	| type = 7 or 8 (1) | count (2) | count × ( key (32) | version (8) ) |
//	+------------------+-----------+-----------------------------------+
//
// type 7 have: the sender holds these records at these versions; type 8
// want: the sender asks for these records, at these versions or later. A
// want is answered with records messages, with whatever we hold of each
// at that version or later.
const (
	msgHave byte = 7
	msgWant byte = 8

	listHdrLen     = 1 + 2
	maxListEntries = (maxPlaintext - listHdrLen) / digestEntryLen

	// wantRetry is how long an unanswered want waits before the record is
	// asked of another neighbour that announced it.
	wantRetry = 2 * time.Second
	// maxWantSources bounds the neighbours remembered per wanted record.
	maxWantSources = 4
)

// AppendEntryList appends a have or want message (typ) holding entries (at
// most maxListEntries) to b.
func AppendEntryList(b []byte, typ byte, entries []DigestEntry) []byte {
	b = append(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(entries)))
	for _, e := range entries {
		b = append(b, e.Key[:]...)
		b = binary.BigEndian.AppendUint64(b, e.Version)
	}
	return b
}

// ParseEntryList parses a whole have or want message of type typ.
func ParseEntryList(b []byte, typ byte) ([]DigestEntry, error) {
	if len(b) < listHdrLen {
		return nil, errShort
	}
	if b[0] != typ {
		return nil, errBadType
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	if n > maxListEntries {
		return nil, errTooMany
	}
	b = b[listHdrLen:]
	if len(b) < n*digestEntryLen {
		return nil, errShort
	}
	if len(b) > n*digestEntryLen {
		return nil, errTrailing
	}
	entries := make([]DigestEntry, n)
	for i := range entries {
		copy(entries[i].Key[:], b)
		entries[i].Version = binary.BigEndian.Uint64(b[key.Len:])
		b = b[digestEntryLen:]
	}
	return entries, nil
}

// packEntryList encodes entries into messages of type typ of at most
// maxListEntries each.
func packEntryList(typ byte, entries []DigestEntry) [][]byte {
	var msgs [][]byte
	for len(entries) > 0 {
		part := entries[:min(len(entries), maxListEntries)]
		entries = entries[len(part):]
		msgs = append(msgs, AppendEntryList(make([]byte, 0, listHdrLen+len(part)*digestEntryLen), typ, part))
	}
	return msgs
}

// want is a record we asked a neighbour for and have not received yet.
type want struct {
	version uint64
	asked   time.Time
	sources []*conn // neighbours that announced it, the one asked first
}

// handleHaveLocked asks c for the records its have lists that we lack and
// have not asked anyone for (or asked for an older version, or too long
// ago).
func (r *Router) handleHaveLocked(c *conn, m []byte) error {
	entries, err := ParseEntryList(m, msgHave)
	if err != nil {
		return err
	}
	now := r.now()
	var ask []DigestEntry
	for _, e := range entries {
		c.heardLocked(e.Key, e.Version)
		if !r.lacksLocked(e.Key, e.Version) {
			continue
		}
		w := r.wants[e.Key]
		if w != nil && w.version >= e.Version && now.Sub(w.asked) < wantRetry {
			if len(w.sources) < maxWantSources {
				w.sources = append(w.sources, c)
			}
			continue
		}
		if w == nil {
			if len(r.wants) >= MaxPeers {
				continue // anti-entropy brings it
			}
			w = &want{}
			r.wants[e.Key] = w
		}
		w.version, w.asked, w.sources = e.Version, now, append(w.sources[:0], c)
		ask = append(ask, e)
	}
	if len(ask) > 0 {
		r.ctr.add(CtrWantsSent, uint64(len(ask)))
		for _, msg := range packEntryList(msgWant, ask) {
			c.queue(msg)
		}
	}
	return nil
}

// handleWantLocked sends c the records it asks for that we hold at the
// version asked or later.
func (r *Router) handleWantLocked(c *conn, m []byte) error {
	entries, err := ParseEntryList(m, msgWant)
	if err != nil {
		return err
	}
	var send []*Record
	for _, e := range entries {
		if e.Key == r.self {
			if r.selfRec.Version >= e.Version {
				send = append(send, r.copySelf())
			}
			continue
		}
		if x := r.recs[e.Key]; x != nil && x.rec.Version != 0 && x.rec.Version >= e.Version {
			rec := x.rec
			send = append(send, &rec)
		}
	}
	r.sendRecordsLocked(c, send)
	return nil
}

// gotLocked notes that rec was merged: a want of it or an older version is
// done.
func (r *Router) gotLocked(rec *Record) {
	if w := r.wants[rec.Key]; w != nil && w.version <= rec.Version {
		delete(r.wants, rec.Key)
	}
}

// retryWantsLocked asks again, of the next neighbour that announced it,
// for each record asked for more than wantRetry ago, and forgets wants
// that nobody left can answer or that became moot.
func (r *Router) retryWantsLocked(now time.Time) {
	for k, w := range r.wants {
		if now.Sub(w.asked) < wantRetry {
			continue
		}
		if !r.lacksLocked(k, w.version) {
			delete(r.wants, k)
			continue
		}
		var next *conn
		for len(w.sources) > 0 && next == nil {
			w.sources = w.sources[1:]
			if len(w.sources) > 0 && r.active[w.sources[0].peer] == w.sources[0] {
				next = w.sources[0]
			}
		}
		if next == nil {
			delete(r.wants, k) // the next have, or anti-entropy, brings it
			continue
		}
		w.asked = now
		r.ctr.inc(CtrWantsSent)
		next.queue(AppendEntryList(nil, msgWant, []DigestEntry{{k, w.version}}))
	}
}

// announceLocked queues recs to c: as a have if c knows haves, else whole.
// Haves wait haveDelay, gathered per neighbour: a change sets off a few
// record versions (a joiner's and those of the peers it connects to, each
// gathered by selfPublishDelay at its owner), which reach a router one by
// one within a few hundred milliseconds, and a have each to each
// neighbour was most of a change's frames (341 per peer per join at 300
// simulated peers, a frame's CPU is mostly its own: encryption, a write,
// a wake-up).
func (r *Router) announceLocked(c *conn, recs []*Record, whole [][]byte) {
	if !c.speaksDigest {
		r.ctr.add(CtrRecordsSent, uint64(len(recs)))
		for _, m := range whole {
			c.queue(m)
		}
		return
	}
	for _, rec := range recs {
		c.haves = append(c.haves, DigestEntry{rec.Key, rec.Version})
	}
	if r.havesPending || r.closed {
		return
	}
	r.havesPending = true
	time.AfterFunc(r.tun.haveDelay, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.flushHavesLocked()
	})
}

// flushHavesLocked queues each neighbour's gathered haves, the newest
// version of each record once.
func (r *Router) flushHavesLocked() {
	r.havesPending = false
	if r.closed {
		return
	}
	for _, c := range r.active {
		if len(c.haves) == 0 {
			continue
		}
		hs := c.haves
		c.haves = nil
		slices.SortFunc(hs, func(a, b DigestEntry) int {
			if c := cmpKey(a.Key, b.Key); c != 0 {
				return c
			}
			return cmp.Compare(b.Version, a.Version)
		})
		hs = slices.CompactFunc(hs, func(a, b DigestEntry) bool { return a.Key == b.Key })
		hs = slices.DeleteFunc(hs, func(e DigestEntry) bool { return c.holdsLocked(e.Key, e.Version) })
		if len(hs) == 0 {
			continue
		}
		r.ctr.add(CtrHavesSent, uint64(len(hs)))
		for _, m := range packEntryList(msgHave, hs) {
			c.queue(m)
		}
	}
}

// heardFor is how long a neighbour's word that it holds a version (a
// have, a record) keeps our haves of it from going back: between one and
// two of these. A flood reaches a router from the neighbours nearer its
// origin first, and each announces the version to it, usually well
// before its own haves leave (haveDelay after the record arrives). At
// 100 simulated routers haves were 30 of a join's 44 frames per peer;
// skipping what the neighbour told us took a join's have entries from
// about 35,500 to 22,500 (its have frames from 30 to 23-26 per peer).
const heardFor = 2 * time.Second

// heardLocked notes that c's peer holds k at version v or later.
func (c *conn) heardLocked(k key.Public, v uint64) {
	if c.heard == nil {
		c.heard = make(map[key.Public]uint64)
	}
	if c.heard[k] < v {
		c.heard[k] = v
	}
}

// holdsLocked reports whether c's peer told us lately that it holds k at
// version v or later.
func (c *conn) holdsLocked(k key.Public, v uint64) bool {
	return c.heard[k] >= v || c.heardOld[k] >= v
}

// forgetHeardLocked ages what the neighbours told us: called every
// heardFor, it keeps one period's worth besides the current one, so a
// connection holds a few seconds of a neighbour's announcements, not an
// entry per peer of the mesh.
func (r *Router) forgetHeardLocked() {
	for _, c := range r.active {
		c.heardOld, c.heard = c.heard, nil
	}
}
