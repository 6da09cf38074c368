package sim

import (
	"crypto/sha256"
	"sync"
	"sync/atomic"

	"github.com/weavewg/weavewg/types/key"
)

// VerifyCache is a discovery.Verifier shared by the simulated routers: each
// distinct (key, domain, message, signature) is verified once, later checks
// are answered from the cache. Calls counts every check the routers asked
// for (what their hosts would each do), Verified the ones actually done.
type VerifyCache struct {
	mu       sync.Mutex
	results  map[[sha256.Size]byte]bool
	Calls    atomic.Uint64
	Verified atomic.Uint64
}

// NewVerifyCache returns an empty cache.
func NewVerifyCache() *VerifyCache {
	return &VerifyCache{results: map[[sha256.Size]byte]bool{}}
}

// Verify has the signature of discovery.Verifier.
func (c *VerifyCache) Verify(p key.Public, domain string, msg []byte, sig *key.Signature) error {
	c.Calls.Add(1)
	h := sha256.New()
	h.Write(p[:])
	h.Write([]byte(domain))
	h.Write([]byte{0})
	h.Write(sig[:])
	h.Write(msg)
	var id [sha256.Size]byte
	h.Sum(id[:0])
	c.mu.Lock()
	ok, known := c.results[id]
	c.mu.Unlock()
	if known {
		if ok {
			return nil
		}
		return key.ErrBadSignature
	}
	c.Verified.Add(1)
	err := key.Verify(p, domain, msg, sig)
	c.mu.Lock()
	c.results[id] = err == nil
	c.mu.Unlock()
	return err
}
