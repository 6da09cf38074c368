//go:build forgetest

package ipam

import "github.com/weavewg/weavewg/types/key"

// ForgeDone makes this peer misbehave as the issue 14 review's patched
// member did, so that an integration test can show the honest peers
// ignore it. Only a binary built with -tags forgetest has it. It claims
// dead's space: a Done transfer of dead to this peer, signed by it and
// certified by its own vote alone, and new states of dead's entries owned
// and signed by this peer. It takes them into its own ring (so this peer
// itself routes and allocates dead's space) and broadcasts the ring.
func (a *Allocator) ForgeDone(dead key.Public) error {
	a.mu.Lock()
	r := a.ring
	i, found := r.transferIndex(dead, a.self)
	if !found {
		r.Transfers = append(r.Transfers[:i:i], append([]Transfer{{Dead: dead, Issuer: a.self}}, r.Transfers[i:]...)...)
	}
	r.setVote(a.self, dead, a.self)
	r.signPending(a.self, a.priv)
	v, _ := r.vote(a.self, dead)
	t := &r.Transfers[i]
	t.Done, t.Withdrawn, t.Accepted, t.Sig = true, false, true, key.Signature{}
	t.Cert = []CertVote{{Voter: a.self, Seq: v.Seq, Sig: v.Sig}}
	for j := range r.Entries {
		if e := &r.Entries[j]; e.Owner == dead {
			e.Owner, e.Writer, e.Sig = a.self, a.self, key.Signature{}
			e.Version++
		}
	}
	r.dropDerived() // entries changed here directly
	o, err := a.ringChangedLocked()
	a.mu.Unlock()
	a.flush(o)
	return err
}
