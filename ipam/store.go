package ipam

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/weavewg/weavewg/types/key"
)

// store keeps the ring and the peer's own allocations across restarts.
// Every method is one transaction: after it returns, a kill -9 keeps it.
type store interface {
	load() (meta storedMeta, ring []byte, allocs map[netip.Addr]string, err error)
	saveMeta(m storedMeta) error
	saveRing(ring []byte) error
	putAlloc(a netip.Addr, id string) error
	delAllocs(as []netip.Addr) error
	// The rings of networks this peer gave up (giveway.go), replaced whole.
	saveLeft(rings [][]byte) error
	loadLeft() ([][]byte, error)
	close() error
}

type storedMeta struct {
	Self  key.Public
	Range netip.Prefix
}

// bbolt layout: bucket "meta" {"self": 32 bytes, "range": text prefix},
// bucket "ring" {"state": ring body as on the wire}, bucket "allocs"
// {4-byte address: container ID}, bucket "left" {1-byte index: ring body
// of a network given up}.
var (
	bucketMeta   = []byte("meta")
	bucketRing   = []byte("ring")
	bucketAllocs = []byte("allocs")
	bucketLeft   = []byte("left")
	keySelf      = []byte("self")
	keyRange     = []byte("range")
	keyState     = []byte("state")
)

type boltStore struct{ db *bolt.DB }

func openBolt(path string, noSync bool) (*boltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoSync: noSync})
	if err != nil {
		return nil, fmt.Errorf("ipam: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketRing, bucketAllocs, bucketLeft} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("ipam: initialising %s: %w", path, err)
	}
	return &boltStore{db}, nil
}

func (s *boltStore) load() (m storedMeta, ring []byte, allocs map[netip.Addr]string, err error) {
	allocs = map[netip.Addr]string{}
	err = s.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMeta)
		if v := mb.Get(keySelf); len(v) == key.Len {
			m.Self = key.Public(v)
		}
		if v := mb.Get(keyRange); v != nil {
			p, err := netip.ParsePrefix(string(v))
			if err != nil {
				return fmt.Errorf("stored range: %w", err)
			}
			m.Range = p
		}
		if v := tx.Bucket(bucketRing).Get(keyState); v != nil {
			ring = append([]byte(nil), v...)
		}
		return tx.Bucket(bucketAllocs).ForEach(func(k, v []byte) error {
			if len(k) != 4 {
				return errors.New("stored allocation key is not an IPv4 address")
			}
			allocs[netip.AddrFrom4([4]byte(k))] = string(v)
			return nil
		})
	})
	return m, ring, allocs, err
}

func (s *boltStore) saveMeta(m storedMeta) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if err := b.Put(keySelf, m.Self[:]); err != nil {
			return err
		}
		return b.Put(keyRange, []byte(m.Range.String()))
	})
}

func (s *boltStore) saveRing(ring []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRing).Put(keyState, ring) })
}

func (s *boltStore) putAlloc(a netip.Addr, id string) error {
	k := a.As4()
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketAllocs).Put(k[:], []byte(id)) })
}

func (s *boltStore) delAllocs(as []netip.Addr) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, a := range as {
			k := a.As4()
			if err := tx.Bucket(bucketAllocs).Delete(k[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *boltStore) saveLeft(rings [][]byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketLeft); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
		b, err := tx.CreateBucket(bucketLeft)
		if err != nil {
			return err
		}
		for i, r := range rings {
			if err := b.Put([]byte{byte(i)}, r); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *boltStore) loadLeft() (rings [][]byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLeft)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			rings = append(rings, append([]byte(nil), v...))
			return nil
		})
	})
	return rings, err
}

func (s *boltStore) close() error { return s.db.Close() }

// memStore is the in-memory store for tests and for callers without a state
// dir. Reopening an Allocator on the same memStore is a restart.
type memStore struct {
	meta   storedMeta
	ring   []byte
	allocs map[netip.Addr]string
	left   [][]byte
}

func newMemStore() *memStore { return &memStore{allocs: map[netip.Addr]string{}} }

func (s *memStore) load() (storedMeta, []byte, map[netip.Addr]string, error) {
	return s.meta, append([]byte(nil), s.ring...), maps.Clone(s.allocs), nil
}
func (s *memStore) saveMeta(m storedMeta) error { s.meta = m; return nil }
func (s *memStore) saveRing(r []byte) error     { s.ring = append([]byte(nil), r...); return nil }
func (s *memStore) putAlloc(a netip.Addr, id string) error {
	s.allocs[a] = id
	return nil
}
func (s *memStore) delAllocs(as []netip.Addr) error {
	for _, a := range as {
		delete(s.allocs, a)
	}
	return nil
}
func (s *memStore) saveLeft(rings [][]byte) error {
	s.left = nil
	for _, r := range rings {
		s.left = append(s.left, append([]byte(nil), r...))
	}
	return nil
}
func (s *memStore) loadLeft() ([][]byte, error) { return slices.Clone(s.left), nil }
func (s *memStore) close() error                { return nil }
