package tunnel

import (
	"sync"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/curve25519"

	"github.com/weavewg/weavewg/types/key"
)

// # Authenticating probes per pair
//
// Probes and probe replies (probe.go) prove which member sent them with a
// MAC keyed per pair of members:
//
//	pairKey(A, B) = BLAKE2s-256("weavewg probe pair v2\x00" ‖ secret ‖
//	                            X25519(a, B) ‖ min(A, B) ‖ max(A, B))
//
// where a is A's private key, B the other's public key and secret the
// network secret. Both ends compute the same key from their own private key;
// a third member, which knows the secret but neither private key, cannot,
// so one member cannot speak for another, and a host without the secret
// cannot either. A probe that verifies is accepted from whatever UDP
// address it came from, and moves the sender's endpoint there, as
// WireGuard's roaming does for its own authenticated packets.
//
// Every message carries the sender's counter for the pair, which starts at
// the sender's clock in nanoseconds when it first sees the peer (so it keeps
// growing across restarts) and grows by one per message; the receiver keeps
// a window of the last replayWindow counters and drops a repeat or anything
// older (counted as udp_relay_dropped_replayed), so a captured probe sent
// again from elsewhere never moves an endpoint.

// pairKeyOf derives the probe MAC key of the pair (self, peer).
func pairKeyOf(priv key.Private, peer key.Public, secret key.Secret) ([32]byte, error) {
	shared, err := curve25519.X25519(priv[:], peer[:])
	if err != nil {
		return [32]byte{}, err // a low-order peer key: no key, its probes fail
	}
	self := priv.Public()
	lo, hi := self, peer
	if peer.Less(self) {
		lo, hi = peer, self
	}
	h, _ := blake2s.New256(nil)
	h.Write([]byte("weavewg probe pair v2\x00"))
	h.Write(secret[:])
	h.Write(shared)
	h.Write(lo[:])
	h.Write(hi[:])
	var k [32]byte
	h.Sum(k[:0])
	return k, nil
}

// pairKeys caches pair keys by peer: one X25519 per new peer, on the control
// path (SetPeers), never on the packet path.
type pairKeys struct {
	priv   key.Private
	secret key.Secret
	keys   map[key.Public]*[32]byte
}

// get returns the pair key of peer (nil if none can be made), computing it
// on first use. Not safe for concurrent use: the Tunnel calls it under mu.
func (p *pairKeys) get(peer key.Public) *[32]byte {
	if k, ok := p.keys[peer]; ok {
		return k
	}
	if p.keys == nil {
		p.keys = map[key.Public]*[32]byte{}
	}
	k, err := pairKeyOf(p.priv, peer, p.secret)
	var kp *[32]byte
	if err == nil {
		kp = &k
	}
	p.keys[peer] = kp
	return kp
}

// forget drops the keys of peers not in keep.
func (p *pairKeys) forget(keep map[key.Public]bool) {
	for k := range p.keys {
		if !keep[k] {
			delete(p.keys, k)
		}
	}
}

// replayWindow is the size of the window of accepted counters.
const replayWindow = 64

// replayFilter accepts each counter at most once, within a window of the
// highest seen (RFC 6479's idea in one word of bitmap: probes are a few a
// second per peer, so the window is never the limit).
type replayFilter struct {
	mu   sync.Mutex
	max  uint64 // highest accepted; 0: none yet
	seen uint64 // bit i: max-i was accepted
}

// accept reports whether ctr is new, and records it.
func (f *replayFilter) accept(ctr uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case ctr == 0:
		return false
	case ctr > f.max:
		if d := ctr - f.max; d < replayWindow {
			f.seen = f.seen<<d | 1
		} else {
			f.seen = 1
		}
		f.max = ctr
		return true
	case f.max-ctr >= replayWindow:
		return false
	}
	bit := uint64(1) << (f.max - ctr)
	if f.seen&bit != 0 {
		return false
	}
	f.seen |= bit
	return true
}
