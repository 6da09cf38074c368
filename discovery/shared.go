package discovery

import (
	"sync"

	"github.com/weavewg/weavewg/types/key"
)

// SharedRecords holds one copy of each peer's newest record for routers
// that run in one process (the simulator, package sim): each router keeps
// every peer's record, so N simulated routers held N×N neighbour lists
// (1.9 KB a record at 30 neighbours: 1.9 GB at N=1,000, the largest part
// of the simulation's heap), where N hosts would each hold N. A record a
// router takes whose key, version and signature match the copy here takes
// the copy's lists; a newer version replaces the copy. Records are never
// changed in place, so sharing their lists is safe. A daemon has no use
// for it (Config.Shared nil).
type SharedRecords struct {
	mu   sync.Mutex
	recs map[key.Public]*Record
}

// NewSharedRecords returns an empty store.
func NewSharedRecords() *SharedRecords {
	return &SharedRecords{recs: map[key.Public]*Record{}}
}

// intern points rec's lists at the stored copy's if it is the same
// record, and stores rec if it is newer. rec's signature has been
// checked: one key, version and signature are one record.
func (s *SharedRecords) intern(rec *Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.recs[rec.Key]
	switch {
	case c != nil && c.Version == rec.Version && c.Sig == rec.Sig:
		rec.Nickname, rec.Attached, rec.Neighbors = c.Nickname, c.Attached, c.Neighbors
	case c == nil || rec.Version > c.Version:
		cp := *rec
		s.recs[rec.Key] = &cp
	}
}
