package tunnel

import (
	"crypto/subtle"
	"sync"

	"golang.org/x/crypto/blake2s"
	"golang.zx2c4.com/wireguard/replay"
)

// # Authenticating every hop of a relay frame
//
// Each hop of a relay frame (relay.go) carries the hop sender's counter and
// a MAC that prove which member sent that hop, so that a frame is accepted
// from whatever UDP address it comes from (a NAT may have given the sender
// another port than gossip or the last frame showed) and a first-hop frame
// moves its sender's endpoint there, as WireGuard's roaming does:
//
//	hopKey(S → R) = BLAKE2s-256("weavewg relay hop v2\x00" ‖ pairKey(S, R) ‖ ID(S))
//	MAC           = BLAKE2s-256(hopKey ‖ header bytes 0–27)[:8]
//
// pairKey is the key of the pair of members (auth.go: only those two can
// make it); ID(S) makes the two directions' keys differ. Bytes 0–27 are the
// whole header but the MAC itself: type, F bit and hop limit, both peer IDs
// and the counter. The payload is not covered: it is WireGuard (or a probe
// with its own end-to-end MAC), authenticated end to end, and leaving it out
// keeps the MAC one BLAKE2s block whatever the frame's size.
//
// Who sent a hop: the source peer when the F bit is clear (the first hop);
// when it is set, the relay at the UDP address the frame came from, which
// must be a member's known address (relays are public peers or peers on
// our LAN, and a relay that moved teaches its new address with its own
// probes and frames within a second).
//
// Counters start at the sender's clock in nanoseconds when it first saw the
// peer (so they keep growing across restarts) and grow by one per frame;
// the receiver keeps WireGuard's replay window (RFC 6479, 8128 counters)
// per hop sender and drops a repeat or anything older than the window:
// frames of one batch, and of batches sent to one relay by several
// wireguard-go goroutines, may arrive out of order, never by more than a
// few batches.
//
// The MAC is a prefix MAC (sound for BLAKE2, which has no length
// extension) in a stack buffer: one 64-byte block, no allocation.

const (
	hopMACLen = 8
	hopMACIn  = 32 + relayOffMAC // key ‖ header up to the MAC: one BLAKE2s block
)

// hopKeyOf is the key of hops sent by the peer with ID from, of the pair
// whose key is pair.
func hopKeyOf(pair *[32]byte, from PeerID) *[32]byte {
	if pair == nil {
		return nil
	}
	var in [len("weavewg relay hop v2\x00") + 32 + len(PeerID{})]byte
	n := copy(in[:], "weavewg relay hop v2\x00")
	n += copy(in[n:], pair[:])
	copy(in[n:], from[:])
	k := blake2s.Sum256(in[:])
	return &k
}

// hopMAC is the MAC of the header at the start of frame under k.
func hopMAC(k *[32]byte, frame []byte) [hopMACLen]byte {
	var in [hopMACIn]byte
	copy(in[:32], k[:])
	copy(in[32:], frame[:relayOffMAC])
	sum := blake2s.Sum256(in[:])
	var m [hopMACLen]byte
	copy(m[:], sum[:hopMACLen])
	return m
}

// sealHop writes the hop counter ctr and the MAC under k into frame's
// header.
func sealHop(frame []byte, k *[32]byte, ctr uint64) {
	putBeUint64(frame[relayOffCtr:relayOffMAC], ctr)
	m := hopMAC(k, frame)
	copy(frame[relayOffMAC:RelayHeaderLen], m[:])
}

// hopMACValid reports whether frame's header carries the MAC of k.
func hopMACValid(k *[32]byte, frame []byte) bool {
	m := hopMAC(k, frame)
	return subtle.ConstantTimeCompare(m[:], frame[relayOffMAC:RelayHeaderLen]) == 1
}

// hopReplay accepts each hop counter of one sender at most once.
type hopReplay struct {
	mu sync.Mutex
	f  replay.Filter
}

// accept reports whether ctr is new, and records it.
func (r *hopReplay) accept(ctr uint64) bool {
	if ctr == 0 {
		return false
	}
	r.mu.Lock()
	ok := r.f.ValidateCounter(ctr, ^uint64(0))
	r.mu.Unlock()
	return ok
}
