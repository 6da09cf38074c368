package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"runtime/debug"
	"time"

	"github.com/weavewg/weavewg/types/key"
	bolt "go.etcd.io/bbolt"
)

// Recovering from a lost or corrupt state file (issue 14).
//
// An ipam.db that bbolt cannot open, whose pages fail bbolt's consistency
// check, or whose stored ring does not parse and validate, is moved aside
// to ipam.db.corrupt-TIME with a log line saying so, and the allocator
// starts with an empty ring, as a joiner does: the ring comes back from the
// peers by gossip. bbolt panics on some corruptions rather than returning
// an error, so opening and checking run under recover. Seeding a new ring
// is the daemon's decision, made only by the start that creates the
// network: a founder that lost its file must not seed a second ring.
//
// The addresses of containers still running are claimed again through
// ClaimAfterRestart: while the ring is unknown the claim is held in memory
// (so no allocation hands the address out) and is recorded once the ring
// arrives and shows the address is ours.

// ErrCorrupt wraps the reason a state file was found unusable.
var ErrCorrupt = errors.New("ipam: state file is corrupt")

// openChecked opens the bbolt file at path and checks it: pages, stored
// meta, allocations and ring. A failure that says the file is damaged
// wraps ErrCorrupt; one that says nothing about the file (another process
// holds its lock, no permission) does not.
func openChecked(path string, noSync bool) (st *boltStore, err error) {
	// bbolt reads the file through a read-only mmap: a damaged freelist or
	// page pointer can send it past the mapping, a memory fault that would
	// kill the process (TestCorruptStateRecoversFromGossip did so once)
	// rather than a panic recover can take. Turn faults into panics here.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if st != nil {
				func() {
					defer func() { _ = recover() }()
					st.db.Close()
				}()
			}
			st, err = nil, fmt.Errorf("%w: bbolt panicked reading it: %v", ErrCorrupt, r)
		}
	}()
	st, err = openBolt(path, noSync)
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) || errors.Is(err, fs.ErrPermission) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	fail := func(err error) (*boltStore, error) {
		st.close()
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := st.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err // the first problem is enough
		}
		return nil
	}); err != nil {
		return fail(err)
	}
	_, rb, _, err := st.load()
	if err != nil {
		return fail(err)
	}
	if rb != nil {
		r, _, err := parseStoredRing(rb, key.Public{})
		if err != nil {
			return fail(fmt.Errorf("stored ring: %w", err))
		}
		if err := r.Validate(); err != nil {
			return fail(fmt.Errorf("stored ring: %w", err))
		}
	}
	return st, nil
}

// openOrSetAside opens path, or moves a corrupt file aside and starts an
// empty one. It returns where the corrupt file went ("" if none).
func openOrSetAside(path string, noSync bool, now time.Time) (*boltStore, string, error) {
	st, err := openChecked(path, noSync)
	if !errors.Is(err, ErrCorrupt) {
		return st, "", err
	}
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, "", fmt.Errorf("%w; moving it aside failed: %v", err, rerr)
	}
	st, err2 := openChecked(path, noSync)
	if err2 != nil {
		return nil, aside, err2
	}
	return st, aside + " (" + err.Error() + ")", nil
}

// ClaimAfterRestart claims addr for id like Claim, for an address a
// container held before this peer restarted. If the ring is not known yet
// (the state file was lost or set aside), the claim is held in memory,
// which keeps Allocate from handing the address out, and is recorded when
// the ring arrives; if the ring then shows the address is another peer's,
// it goes to Conflicts.
func (a *Allocator) ClaimAfterRestart(addr netip.Addr, id string) error {
	a.mu.Lock()
	if !a.closed && !a.ring.Seeded() && addr.Is4() && a.span.Contains(a2u(addr)) && !a.reserved[a2u(addr)] {
		if cur, ok := a.allocs[addr]; ok && cur != id {
			a.mu.Unlock()
			return fmt.Errorf("%w: %v is in use by %q", ErrAddressTaken, addr, cur)
		}
		a.allocs[addr] = id
		a.byID[id] = append(a.byID[id], addr)
		a.freeStale = true
		a.pendingClaims[addr] = true
		a.count("ipam_claim_pending")
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()
	return a.Claim(addr, id)
}

// recordPendingClaimsLocked persists the claims held while the ring was
// unknown, now that it is: those in our space are recorded; the others are
// left to dropLostLocked, which reports them as conflicts.
func (a *Allocator) recordPendingClaimsLocked() {
	if len(a.pendingClaims) == 0 || !a.ring.Seeded() {
		return
	}
	for addr := range a.pendingClaims {
		delete(a.pendingClaims, addr)
		owner, ok := a.ring.Owner(addr)
		id, held := a.allocs[addr]
		if !ok || !held || owner != a.self {
			continue
		}
		if err := a.st.putAlloc(addr, id); err != nil {
			a.log.Error("recording an address claimed after recovery", "addr", addr, "id", id, "err", err)
		}
	}
}
