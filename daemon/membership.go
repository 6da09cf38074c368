package daemon

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/atomicfile"
	"github.com/weavewg/weavewg/types/key"
)

// Membership: evicting a member (weavewg evict) and what follows from it
// here. The records themselves are discovery's (discovery/evict.go); the
// daemon keeps them in the state dir, answers the API, shows them in
// status, and reclaims an evicted peer's address space through rmpeer.
//
//	evictions.json  every eviction record this peer verified, signed by its evictor
const evictionsFile = "evictions.json"

// evictReclaimAfter is how long a member other than the evictor waits for
// the evictor's rmpeer before issuing its own (the evictor may have died):
// one issuer is the normal case, and every transfer is kept for the
// network's life (ipam.MaxTransfers).
const evictReclaimAfter = 30 * time.Second

// memberRegistry is the eviction part of discovery.Router.
type memberRegistry interface {
	Evict(peer key.Public) (discovery.EvictRecord, error)
	Evictions() []discovery.EvictRecord
}

// evictionFile is one record as kept in evictions.json.
type evictionFile struct {
	Peer      string    `json:"peer"`    // public key, base64
	Evictor   string    `json:"evictor"` // public key, base64
	Time      time.Time `json:"time"`
	Signature string    `json:"signature"` // base64
}

// loadEvictions reads evictions.json. A missing file is no evictions; a
// corrupt one is moved aside (the records come back from the peers, who
// all keep them) and reported.
func loadEvictions(dir string) ([]discovery.EvictRecord, error) {
	path := filepath.Join(dir, evictionsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var fs []evictionFile
	if err := json.Unmarshal(b, &fs); err != nil {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("%s is corrupt (%v) and could not be moved aside: %w", evictionsFile, err, rerr)
		}
		return nil, fmt.Errorf("%s is corrupt (%v); moved it to %s, the records come back from the peers", evictionsFile, err, aside)
	}
	out := make([]discovery.EvictRecord, 0, len(fs))
	for _, f := range fs {
		var e discovery.EvictRecord
		var perr error
		if e.Peer, perr = key.ParsePublic(f.Peer); perr != nil {
			continue
		}
		if e.Evictor, perr = key.ParsePublic(f.Evictor); perr != nil {
			continue
		}
		sig, serr := base64.StdEncoding.DecodeString(f.Signature)
		if serr != nil || len(sig) != key.SigLen {
			continue
		}
		copy(e.Sig[:], sig)
		e.Time = f.Time
		out = append(out, e) // the router checks every signature
	}
	return out, nil
}

func saveEvictionsFile(dir string, recs []discovery.EvictRecord) error {
	fs := make([]evictionFile, 0, len(recs))
	for _, e := range recs {
		fs = append(fs, evictionFile{Peer: e.Peer.String(), Evictor: e.Evictor.String(), Time: e.Time,
			Signature: base64.StdEncoding.EncodeToString(e.Sig[:])})
	}
	b, err := json.MarshalIndent(fs, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, evictionsFile), append(b, '\n'), 0o600)
}

// nicknames remembers the nicknames of peers seen in gossip, so status can
// name a peer after its record is gone (evicted). Guarded by its own mu.
type nicknames struct {
	mu sync.Mutex
	m  map[key.Public]string
}

func (n *nicknames) note(peers []discovery.Peer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil || len(n.m) > 2*discovery.MaxPeers {
		n.m = map[key.Public]string{}
	}
	for _, p := range peers {
		if p.Nickname != "" {
			n.m[p.Key] = p.Nickname
		}
	}
}

func (n *nicknames) of(k key.Public) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.m[k]
}

// evict evicts the named peer from the network.
func (d *Daemon) evict(name string) (api.Evicted, error) {
	if name == "" {
		return api.Evicted{}, badRequest("name the peer to evict (its name, nickname or public key)")
	}
	for _, e := range d.members.Evictions() {
		if e.Peer.Name() == name || e.Peer.String() == name || d.nicks.of(e.Peer) == name {
			return d.evictedAPI(e), badRequest("%s was evicted already (by %s at %s)", d.describe(e.Peer),
				d.describe(e.Evictor), e.Time.Format(time.RFC3339))
		}
	}
	k, err := d.findPeer(name)
	if err != nil {
		return api.Evicted{}, err
	}
	if k == d.pub {
		return api.Evicted{}, badRequest("%s is this peer: %v", name, discovery.ErrEvictSelf)
	}
	d.nicks.note(d.router.Peers())
	e, err := d.members.Evict(k)
	if errors.Is(err, discovery.ErrEvicted) {
		return d.evictedAPI(e), badRequest("%s: %v", d.describe(k), err)
	}
	if err != nil {
		return api.Evicted{}, badRequest("%v", err)
	}
	d.log.Warn("evicted a peer from the network", "peer", k.Name(), "nickname", d.nicks.of(k))
	d.nudge()
	return d.evictedAPI(e), nil
}

func (d *Daemon) evictedAPI(e discovery.EvictRecord) api.Evicted {
	return api.Evicted{
		Peer: e.Peer.Name(), PublicKey: e.Peer.String(), Nickname: d.nicks.of(e.Peer),
		Evictor: e.Evictor.Name(), EvictorNickname: d.nicks.of(e.Evictor), Time: e.Time,
	}
}

func (d *Daemon) evictedList() []api.Evicted {
	out := []api.Evicted{}
	for _, e := range d.members.Evictions() {
		out = append(out, d.evictedAPI(e))
	}
	return out
}

// reclaimEvicted runs from the allocator's tick: the evictor issues rmpeer
// for an evicted owner's ranges at once, every other member after
// evictReclaimAfter if no transfer of them exists by then (ipam.Reclaim
// skips a peer already being handled).
func (d *Daemon) reclaimEvicted(now time.Time) {
	evs := d.members.Evictions()
	if len(evs) == 0 {
		return
	}
	if d.evictSeen == nil {
		d.evictSeen = map[key.Public]time.Time{}
	}
	gone := map[key.Public]time.Time{}
	for _, e := range evs {
		if e.Peer == d.pub {
			continue
		}
		seen, ok := d.evictSeen[e.Peer]
		if !ok {
			seen = now
			d.evictSeen[e.Peer] = now
		}
		if e.Evictor == d.pub || now.Sub(seen) >= evictReclaimAfter {
			gone[e.Peer] = time.Time{} // gone since forever: reclaim now
		}
	}
	if len(gone) == 0 {
		return
	}
	for _, p := range d.ipam.Reclaim(gone, time.Nanosecond) {
		d.log.Warn("rmpeer: taking over the address space of an evicted peer", "peer", p.Name(), "nickname", d.nicks.of(p))
	}
}
