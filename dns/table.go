package dns

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// Table is the gossiped name table: a map from entry identity to the latest
// state its owner gave it (a last-writer-wins register per entry, where the
// only writer is the owner). Merge keeps the higher version per identity,
// which is commutative, associative and idempotent.
//
// The table reads no clock and does no I/O: callers pass now. It is safe for
// concurrent use; readers on the DNS answer path use Snapshot, an atomic
// pointer that takes no lock except at the first read after a change.
//
// Three local (not gossiped) rules sit on top of the CRDT:
//   - The owner is the authority on its own entries. If gossip brings this
//     peer a live entry it owns but does not hold live (e.g. from before a
//     restart), the merge answers with a tombstone at a higher version; a
//     tombstone for an entry it holds live is answered by re-asserting it.
//   - Entries of peers marked unreachable (SetReachable, RemovePeer) are kept
//     but not answered; when the peer is reachable again they are answered at
//     once, and its gossip brings any change. After PeerExpiry unreachable they
//     are deleted.
//   - A tombstone is deleted TombstoneExpiry after this peer first saw it.
//     Should a stale live copy come back later, the owner rule above buries
//     it again once it reaches the owner.
type Table struct {
	// Constant after NewTable.
	self            key.Public
	tombstoneExpiry time.Duration
	peerExpiry      time.Duration

	// Atomic: the answer path's view; nil after a change until the next
	// Snapshot builds it.
	snap atomic.Pointer[Snapshot]

	mu sync.Mutex
	// Guarded by mu.
	entries map[id]*row
	// owners indexes entries by owner, with each owner's newest version,
	// and buckets keeps the digest's hashes (digest.go), both kept current
	// on every change (putLocked, deleteLocked, raisedLocked): an arrival's
	// answer, a pull's and a digest read what they need, where each read
	// the whole table (O(N) per router per change and per digest round;
	// 2-7 % of the simulation's CPU at N=150-1,000).
	owners  map[key.Public]*owned
	buckets [digestBuckets]bucket
	// lastVersion is the highest version this peer has stamped on its own
	// entries; new stamps are max(now, lastVersion+1).
	lastVersion uint64
	// down holds the peers marked unreachable, with the time they went down.
	down map[key.Public]time.Time
	// up holds the peers marked reachable, once SetReachable or
	// PeersChanged was called (nil before: every owner is answered). An
	// entry that arrives from an owner in neither up nor down marks the
	// owner down at once (Merge), as SetReachable's pass over every entry
	// did on the next call.
	up map[key.Public]bool
	// The answerable view is kept incrementally (view.go): live counts
	// the answerable rows (live, owner not down) of each (name, address),
	// touched holds the pairs whose count went to or from zero since
	// built, the last view built, and entRefs counts the names of built
	// below each empty non-terminal.
	live    map[nameAddr]int32
	touched map[nameAddr]struct{}
	built   *Snapshot
	entRefs map[string]int32
}

type row struct {
	Entry
	seen time.Time // when this peer stored the current state (for tombstone expiry)
}

// owned is one owner's rows and the newest version among them,
// tombstones included. The rows are a slice, searched by pointer: an
// owner has a few entries (a container's names), and every peer holds
// one owned of every owner, N² in a simulation of N peers, where a map
// of one row took 900 bytes (0.5 GB of the N=1,000 simulation's heap at
// 650 peers).
type owned struct {
	rows   []*row
	newest uint64
}

// putLocked stores r, replacing the row of its identity if any (whose
// version is never above r's).
func (t *Table) putLocked(r *row) {
	k := r.id()
	old := t.entries[k]
	t.entries[k] = r
	o := t.owners[r.Owner]
	if o == nil {
		o = &owned{rows: make([]*row, 0, 1)}
		t.owners[r.Owner] = o
		t.bucketAddLocked(r.Owner)
	}
	if i := slices.Index(o.rows, old); old != nil && i >= 0 {
		o.rows[i] = r
	} else {
		o.rows = append(o.rows, r)
	}
	t.raisedLocked(r)
	if old != nil && t.answerableLocked(old) {
		t.countLocked(old, -1)
	}
	if t.answerableLocked(r) {
		t.countLocked(r, 1)
	}
}

// raisedLocked notes that r's version may have risen (r is stored).
func (t *Table) raisedLocked(r *row) {
	if o := t.owners[r.Owner]; o != nil && r.Version > o.newest {
		o.newest = r.Version
		t.buckets[digestBucket(r.Owner)].dirty = true
	}
}

// deleteLocked deletes the row of identity k.
func (t *Table) deleteLocked(k id) {
	r := t.entries[k]
	if r == nil {
		return
	}
	delete(t.entries, k)
	if t.answerableLocked(r) {
		t.countLocked(r, -1)
	}
	o := t.owners[k.owner]
	if o == nil {
		return
	}
	if i := slices.Index(o.rows, r); i >= 0 {
		last := len(o.rows) - 1
		o.rows[i] = o.rows[last]
		o.rows[last] = nil
		o.rows = o.rows[:last]
	}
	if len(o.rows) == 0 {
		delete(t.owners, k.owner)
		t.bucketRemoveLocked(k.owner)
		return
	}
	if r.Version < o.newest {
		return
	}
	var v uint64
	for _, r := range o.rows {
		v = max(v, r.Version)
	}
	if v != o.newest {
		o.newest = v
		t.buckets[digestBucket(k.owner)].dirty = true
	}
}

// Defaults for TableOptions.
const (
	DefaultTombstoneExpiry = 10 * time.Minute
	DefaultPeerExpiry      = time.Hour
)

// TableOptions tunes a Table; zero values take the defaults.
type TableOptions struct {
	TombstoneExpiry time.Duration
	PeerExpiry      time.Duration
}

// NewTable returns an empty table for the peer self.
func NewTable(self key.Public, opts TableOptions) *Table {
	t := &Table{
		self:            self,
		tombstoneExpiry: cmpOr(opts.TombstoneExpiry, DefaultTombstoneExpiry),
		peerExpiry:      cmpOr(opts.PeerExpiry, DefaultPeerExpiry),
		entries:         make(map[id]*row),
		owners:          make(map[key.Public]*owned),
		down:            make(map[key.Public]time.Time),
		live:            make(map[nameAddr]int32),
		touched:         make(map[nameAddr]struct{}),
		built:           emptySnapshot,
		entRefs:         make(map[string]int32),
	}
	t.snap.Store(emptySnapshot)
	return t
}

func cmpOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (t *Table) stampLocked(now time.Time) uint64 {
	v := uint64(max(now.UnixNano(), 1))
	if v <= t.lastVersion {
		v = t.lastVersion + 1
	}
	t.lastVersion = v
	return v
}

// Add makes this peer's entry (name, addr, origin) live. name must be in
// canonical form (CanonicalName). It returns the entries to broadcast (none
// when the entry was already live).
func (t *Table) Add(name string, addr netip.Addr, origin string, now time.Time) ([]Entry, error) {
	e := Entry{Owner: t.self, Name: name, Addr: addr, Origin: origin}
	if err := e.valid(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if r, ok := t.entries[e.id()]; ok && !r.Tombstone {
		return nil, nil
	}
	e.Version = t.stampLocked(now)
	t.putLocked(&row{Entry: e, seen: now})
	t.publishLocked()
	return []Entry{e}, nil
}

// Remove tombstones this peer's live entries that match: an empty name or
// origin and an invalid addr match anything. It returns the tombstones to
// broadcast.
func (t *Table) Remove(name string, addr netip.Addr, origin string, now time.Time) []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Entry
	var own []*row
	if o := t.owners[t.self]; o != nil {
		own = o.rows
	}
	for _, r := range own {
		if r.Tombstone ||
			(name != "" && r.Name != name) ||
			(addr.IsValid() && r.Addr != addr) ||
			(origin != "" && r.Origin != origin) {
			continue
		}
		if t.answerableLocked(r) {
			t.countLocked(r, -1)
		}
		r.Version = t.stampLocked(now)
		r.Tombstone = true
		r.seen = now
		t.raisedLocked(r)
		out = append(out, r.Entry)
	}
	if len(out) > 0 {
		t.publishLocked()
	}
	return out
}

// Merge merges entries received from gossip. It returns the entries that
// changed this table (news, for a transport that must relay) and the
// entries this peer must broadcast as the owner's answer to stale copies of
// its own entries (see the Table doc).
func (t *Table) Merge(in []Entry, now time.Time) (news, replies []Entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range in {
		e := in[i]
		if e.valid() != nil {
			continue
		}
		r, ok := t.entries[e.id()]
		if e.Owner == t.self {
			if ok && !newer(&e, &r.Entry) {
				continue
			}
			// Someone holds a copy newer than ours (or one we never had):
			// our own state wins, at a version above theirs.
			if t.lastVersion < e.Version {
				t.lastVersion = e.Version
			}
			var reply Entry
			switch {
			case !ok && e.Tombstone:
				// A tombstone of ours we had already expired: keep it.
				t.putLocked(&row{Entry: e, seen: now})
				continue
			case !ok:
				reply = e
				reply.Tombstone = true
			case r.Tombstone == e.Tombstone:
				// Same state at a higher version: adopt the version.
				r.Version = e.Version
				t.raisedLocked(r)
				continue
			default:
				reply = r.Entry
			}
			reply.Version = t.stampLocked(now)
			t.putLocked(&row{Entry: reply, seen: now})
			replies = append(replies, reply)
			continue
		}
		if ok && !newer(&e, &r.Entry) {
			continue
		}
		t.putLocked(&row{Entry: e, seen: now})
		news = append(news, e)
		if t.up != nil && !t.up[e.Owner] {
			t.markDownLocked(e.Owner, now)
		}
	}
	if len(news) > 0 || len(replies) > 0 {
		t.publishLocked()
	}
	return news, replies
}

// SetReachable marks exactly the given peers reachable and every other
// peer that owns entries (except this one) unreachable since now.
func (t *Table) SetReachable(peers []key.Public, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	up := make(map[key.Public]bool, len(peers))
	for _, p := range peers {
		up[p] = true
	}
	t.up = up
	changed := false
	for p := range t.down {
		if up[p] {
			changed = t.markUpLocked(p) || changed
		}
	}
	for o := range t.owners {
		if o != t.self && !up[o] {
			changed = t.markDownLocked(o, now) || changed
		}
	}
	if changed {
		t.publishLocked()
	}
}

// SetPeerReachable marks one peer reachable or not (since now).
func (t *Table) SetPeerReachable(p key.Public, reachable bool, now time.Time) {
	if p == t.self {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.up != nil {
		if reachable {
			t.up[p] = true
		} else {
			delete(t.up, p)
		}
	}
	if reachable && t.markUpLocked(p) || !reachable && t.markDownLocked(p, now) {
		t.publishLocked()
	}
}

// PeersChanged marks the peers in up reachable and those in down
// unreachable since now (a peer is in one list at most), every other
// peer as it was: SetReachable for a
// change of a few peers, without a pass over every peer and entry. Call
// SetReachable first: this marks down only the peers it is given, and
// the owners of entries that arrive afterwards while not marked
// reachable (Merge).
func (t *Table) PeersChanged(up, down []key.Public, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.up == nil {
		t.up = make(map[key.Public]bool, len(up))
	}
	changed := false
	for _, p := range up {
		if p == t.self {
			continue
		}
		t.up[p] = true
		changed = t.markUpLocked(p) || changed
	}
	for _, p := range down {
		if p == t.self {
			continue
		}
		delete(t.up, p)
		changed = t.markDownLocked(p, now) || changed
	}
	if changed {
		t.publishLocked()
	}
}

// Expire deletes tombstones older than TombstoneExpiry and the entries of
// peers unreachable for longer than PeerExpiry. Call it now and then (every
// few seconds is plenty).
func (t *Table) Expire(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := false
	for k, r := range t.entries {
		if r.Tombstone && now.Sub(r.seen) >= t.tombstoneExpiry {
			t.deleteLocked(k)
			changed = true
			continue
		}
		if since, ok := t.down[r.Owner]; ok && now.Sub(since) >= t.peerExpiry {
			t.deleteLocked(k)
			changed = true
		}
	}
	for p, since := range t.down {
		if now.Sub(since) >= t.peerExpiry {
			delete(t.down, p)
		}
	}
	if changed {
		t.publishLocked()
	}
}

// All returns every entry, tombstones included, in a stable order: the full
// state for anti-entropy.
func (t *Table) All() []Entry {
	t.mu.Lock()
	out := make([]Entry, 0, len(t.entries))
	for _, r := range t.entries {
		out = append(out, r.Entry)
	}
	t.mu.Unlock()
	sortEntries(out)
	return out
}

// entriesOf returns, by owner, the entries (tombstones included) of the
// given owners, each owner's sorted: from the index by owner, so an
// arrival's answer costs the entries it sends, where a pass over the whole
// table cost every peer O(N) per join (2.2-2.6 % of the simulation's CPU
// at N=300-1,000).
func (t *Table) entriesOf(owners map[key.Public]bool) map[key.Public][]Entry {
	out := make(map[key.Public][]Entry, len(owners))
	t.mu.Lock()
	for k := range owners {
		o := t.owners[k]
		if o == nil {
			continue
		}
		es := make([]Entry, 0, len(o.rows))
		for _, r := range o.rows {
			es = append(es, r.Entry)
		}
		out[k] = es
	}
	t.mu.Unlock()
	for _, es := range out {
		sortEntries(es)
	}
	return out
}

// ownEntries returns this peer's entries, tombstones included, sorted.
func (t *Table) ownEntries() []Entry {
	return t.entriesOf(map[key.Public]bool{t.self: true})[t.self]
}

// EntryStatus is an entry as `status dns` shows it.
type EntryStatus struct {
	Entry
	Reachable bool // false: the owner is unreachable and the entry is not answered
}

// Entries returns the live entries, sorted by name, address, owner.
func (t *Table) Entries() []EntryStatus {
	t.mu.Lock()
	out := make([]EntryStatus, 0, len(t.entries))
	for _, r := range t.entries {
		if r.Tombstone {
			continue
		}
		_, down := t.down[r.Owner]
		out = append(out, EntryStatus{Entry: r.Entry, Reachable: !down})
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b EntryStatus) int { return compareEntries(&a.Entry, &b.Entry) })
	return out
}

func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int { return compareEntries(&a, &b) })
}

func compareEntries(a, b *Entry) int {
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := strings.Compare(string(a.Owner[:]), string(b.Owner[:])); c != 0 {
		return c
	}
	return strings.Compare(a.Origin, b.Origin)
}

// Snapshot returns the current answerable view. The first read after a
// change builds it under the table's lock, from the last one and the
// (name, address) pairs that changed since (view.go): O(changes), where
// building it from the whole table was O(entries) per change, 3-5 ms at
// 1,000 owners. Later reads take no lock.
func (t *Table) Snapshot() *Snapshot {
	if s := t.snap.Load(); s != nil {
		return s
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.snap.Load(); s != nil {
		return s
	}
	s := t.buildLocked()
	t.snap.Store(s)
	return s
}

// publishLocked drops the view after a change: the next Snapshot builds
// it.
func (t *Table) publishLocked() { t.snap.Store(nil) }
