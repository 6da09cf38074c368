package ipam

import (
	"fmt"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// Benchmarks of one peer's IPAM work per change, per arrival and per
// second at ring sizes of 100, 300 and 1,000 owners (issue 18): each
// should cost about the same at every size (what changed, or this peer's
// own share), not grow with the ring. Signatures are not checked here (a
// verifier that accepts all): the simulation shares one cache of them,
// and a daemon's checks are per item received, not per ring entry.

var benchOwners = []int{100, 300, 1000}

// benchPeer is an allocator (pk(1)) whose ring has owners owners, one
// entry of 1,024 addresses each (owner 0 the rest of 10.32.0.0/12), and
// the keys of the owners.
func benchPeer(b *testing.B, owners int) (*Allocator, []key.Public) {
	b.Helper()
	checkDerived = false // the benchmarks measure the index, not its check
	self := pk(1)
	a, err := Open(Config{Self: self, Private: privOf(self), Range: testRange, NoSync: true,
		Verify: func(key.Public, string, []byte, *key.Signature) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	keys := make([]key.Public, owners)
	keys[0], keys[1] = pk(0), self
	for i := 2; i < owners; i++ {
		keys[i][0], keys[i][1], keys[i][31] = byte(i>>8), byte(i), 0xbb
	}
	r := mustRing(b)
	r.Seed = Seed{keys[0], 42}
	first := r.span().First
	for i, k := range keys {
		e := Entry{Token: first + uint32(i)*1024, Owner: k, Version: 2, Free: 1000, Writer: k}
		e.Sig[0], e.Sig[1] = byte(i), 1
		r.Entries = append(r.Entries, e)
	}
	if err := r.Validate(); err != nil {
		b.Fatal(err)
	}
	a.mu.Lock()
	a.ring = r
	a.reachable = map[key.Public]bool{}
	for _, k := range keys[2:] {
		a.reachable[k] = true
	}
	a.publishFreeLocked(false)
	_, err = a.ringChangedLocked()
	a.mu.Unlock()
	if err != nil {
		b.Fatal(err)
	}
	return a, keys
}

// changeMessages returns n broadcasts of a free count change, each by
// another owner (round robin from owner 2), with versions from round on:
// a part of its entry and the next one as its bound, as the owner sends.
func changeMessages(b *testing.B, a *Allocator, keys []key.Public, n, from int) (msgs [][]byte, senders []key.Public) {
	b.Helper()
	a.mu.Lock()
	r := a.ring.Clone()
	a.mu.Unlock()
	others := len(keys) - 2
	for k := range n {
		i := 2 + (from+k)%others
		e := r.Entries[i]
		e.Version = uint32(3 + (from+k)/others)
		e.Free = 1000 - uint32((from+k)/others)%1000
		e.Sig[2], e.Sig[3] = byte(e.Version), byte(e.Version>>8)
		p := &RingPart{Ring: &Ring{Range: r.Range, Seed: r.Seed}}
		p.Ring.Entries = append(p.Ring.Entries, e)
		p.Bound = append(p.Bound, false)
		if i+1 < len(r.Entries) {
			p.Ring.Entries = append(p.Ring.Entries, r.Entries[i+1])
			p.Bound = append(p.Bound, true)
		}
		m, err := AppendRingPartMessage(nil, p)
		if err != nil {
			b.Fatal(err)
		}
		msgs, senders = append(msgs, m), append(senders, keys[i])
	}
	return msgs, senders
}

// BenchmarkHandleChange: a peer takes another owner's broadcast of a
// change (its free count): the commonest ring message.
func BenchmarkHandleChange(b *testing.B) {
	benchChanges(b, func(a *Allocator) {})
}

// benchChanges times a peer taking other owners' changes, then after(a)
// for each, at each of benchOwners; the messages are made off the clock
// 1,024 at a time.
func benchChanges(b *testing.B, after func(a *Allocator)) {
	for _, n := range benchOwners {
		b.Run(fmt.Sprint("owners=", n), func(b *testing.B) {
			a, keys := benchPeer(b, n)
			const chunk = 1024
			done := 0
			msgs, senders := changeMessages(b, a, keys, chunk, done)
			k := 0
			b.ReportAllocs()
			for b.Loop() {
				if k == len(msgs) {
					b.StopTimer()
					done += chunk
					msgs, senders = changeMessages(b, a, keys, chunk, done)
					k = 0
					b.StartTimer()
				}
				if err := a.HandleMessage(senders[k], msgs[k]); err != nil {
					b.Fatal(err)
				}
				after(a)
				k++
			}
			if got := a.Counters()["ipam_ring_received"]; got == 0 {
				b.Fatal("no ring taken")
			}
		})
	}
}

// BenchmarkSendOwn: a peer sends its own entries to one that has just
// become reachable.
func BenchmarkSendOwn(b *testing.B) {
	for _, n := range benchOwners {
		b.Run(fmt.Sprint("owners=", n), func(b *testing.B) {
			a, keys := benchPeer(b, n)
			b.ReportAllocs()
			for b.Loop() {
				a.SendOwn(keys[2])
			}
		})
	}
}

// BenchmarkTickIdle: the once-a-second tick of a peer whose ring and
// allocations did not change.
func BenchmarkTickIdle(b *testing.B) {
	for _, n := range benchOwners {
		b.Run(fmt.Sprint("owners=", n), func(b *testing.B) {
			a, _ := benchPeer(b, n)
			if _, err := a.Allocate("c"); err != nil {
				b.Fatal(err)
			}
			a.Tick()
			b.ReportAllocs()
			for b.Loop() {
				a.Tick()
			}
		})
	}
}

// BenchmarkDigest: an anti-entropy round between two peers whose rings
// agree (every 10 s per peer): one digest made and one answered.
func BenchmarkDigest(b *testing.B) {
	for _, n := range benchOwners {
		b.Run(fmt.Sprint("owners=", n), func(b *testing.B) {
			a, keys := benchPeer(b, n)
			a.mu.Lock()
			d := digestOf(a.ring)
			a.mu.Unlock()
			msg := appendDigestMessage(nil, &d)
			b.ReportAllocs()
			for b.Loop() {
				a.SendDigest(keys[2])
				if err := a.HandleMessage(keys[2], msg); err != nil {
					b.Fatal(err)
				}
			}
			if a.Counters()["ipam_digest_matched"] == 0 {
				b.Fatal("digests differed")
			}
		})
	}
}

// BenchmarkChangeThenDigest: a peer takes another owner's change and then
// makes its digest, as a quick round after each change does (digest.go):
// the digest is hashed again after every change of the ring.
func BenchmarkChangeThenDigest(b *testing.B) {
	benchChanges(b, func(a *Allocator) {
		a.mu.Lock()
		a.digestLocked()
		a.mu.Unlock()
	})
}

// BenchmarkSaveRing: the save of a ring changed by merges (Tick, at most
// every mergedSaveInterval): the whole ring encoded and written (to the
// in-memory store here; a daemon's bbolt write comes on top).
func BenchmarkSaveRing(b *testing.B) {
	for _, n := range benchOwners {
		b.Run(fmt.Sprint("owners=", n), func(b *testing.B) {
			a, _ := benchPeer(b, n)
			b.ReportAllocs()
			for b.Loop() {
				a.mu.Lock()
				if err := a.saveRingLocked(); err != nil {
					b.Fatal(err)
				}
				a.mu.Unlock()
			}
		})
	}
}
