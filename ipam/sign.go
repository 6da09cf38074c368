package ipam

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/weavewg/weavewg/types/key"
)

// Signatures (issue 14). Every entry state is signed by its writer, every
// vote by its voter, every transfer state by its issuer, with the identity
// key (XEdDSA, types/key/sign.go), so any peer can relay ring state and a
// receiver still knows who said what. Each signed message starts with the
// ring's range and seed, so a signature made for one network (or range)
// never verifies in another, and a domain string per kind, so an entry's
// signature never passes for a vote's:
//
//	prefix   = range addr 4 | bits 1 | seed peer 32 | seed id 8
//	entry    = prefix | token 4 | owner 32 | version 4 | free 4 | writer 32
//	vote     = prefix | voter 32 | dead 32 | seq 4 | issuer 32
//	transfer = prefix | dead 32 | issuer 32 | state 1 (0 issued, 1 withdrawn, 2 done)
//	           | ncert 2 | ncert × ( voter 32 | seq 4 )
//	claim    = prefix | dead 32 | issuer 32 | state 1 (2 done)
//
// A certificate vote is an ordinary vote (voter, dead, seq, issuer) and its
// signature the voter's. A Done whose certificate is larger than one part
// carries is signed as a claim (its own domain): the signature does not
// cover the certificate, so a certificate of a thousand votes travels in
// slices that each verify on their own (parts.go) and a receiver's
// certificate grows to their union. What a certificate proves is in its
// votes' signatures, never in the issuer's: Ring.acceptable reads only
// which voters signed. A smaller one is signed as a transfer, over the
// votes it counted, as earlier versions sign and verify it.
const (
	entryDomain    = "weavewg ipam entry v1"
	voteDomain     = "weavewg ipam vote v1"
	transferDomain = "weavewg ipam transfer v1"
	claimDomain    = "weavewg ipam done claim v1"
)

func (r *Ring) sigPrefix(b []byte) []byte {
	a4 := r.Range.Addr().As4()
	b = append(b, a4[:]...)
	b = append(b, byte(r.Range.Bits()))
	b = append(b, r.Seed.Peer[:]...)
	return binary.BigEndian.AppendUint64(b, r.Seed.ID)
}

func (r *Ring) entryMessage(e *Entry) []byte {
	b := r.sigPrefix(make([]byte, 0, 45+4+32+12+32))
	b = binary.BigEndian.AppendUint32(b, e.Token)
	b = append(b, e.Owner[:]...)
	b = binary.BigEndian.AppendUint32(b, e.Version)
	b = binary.BigEndian.AppendUint32(b, e.Free)
	return append(b, e.Writer[:]...)
}

func (r *Ring) voteMessage(voter, dead key.Public, seq uint32, issuer key.Public) []byte {
	b := r.sigPrefix(make([]byte, 0, 45+3*32+4))
	b = append(b, voter[:]...)
	b = append(b, dead[:]...)
	b = binary.BigEndian.AppendUint32(b, seq)
	return append(b, issuer[:]...)
}

func (r *Ring) transferMessage(t *Transfer) []byte {
	b := r.sigPrefix(make([]byte, 0, 45+2*32+3+len(t.Cert)*36))
	b = append(b, t.Dead[:]...)
	b = append(b, t.Issuer[:]...)
	b = append(b, byte(transferRank(*t)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(t.Cert)))
	for _, c := range t.Cert {
		b = append(b, c.Voter[:]...)
		b = binary.BigEndian.AppendUint32(b, c.Seq)
	}
	return b
}

func (r *Ring) claimMessage(t *Transfer) []byte {
	b := r.sigPrefix(make([]byte, 0, 45+2*32+1))
	b = append(b, t.Dead[:]...)
	b = append(b, t.Issuer[:]...)
	return append(b, byte(transferRank(*t)))
}

// signPending signs every item self made since the last call (they carry
// a zero signature until then): the Ring's methods stay free of keys, and
// the allocator signs once per change, before the ring is saved or sent.
// It returns how many items it signed (whether this peer changed the
// ring) and marks the entries it signed in r.signed (for the broadcast of
// the change, parts.go).
func (r *Ring) signPending(self key.Public, priv key.Private) (signed int) {
	var zero key.Signature
	r.signed = r.signed[:0]
	sign := func(i int) {
		if e := &r.Entries[i]; e.Writer == self && e.Sig == zero {
			e.Sig = key.Sign(priv, entryDomain, r.entryMessage(e))
			r.noteEntry(e.Token)
			signed++
			r.signed = append(r.signed, i)
		}
	}
	if r.signedFor != self {
		// A state not followed since the last whole pass (own.go).
		for i := range r.Entries {
			sign(i)
		}
		r.signedFor = self
	} else {
		// Only the entries written since (Grant, setFree), in ring order.
		slices.Sort(r.pending)
		for k, t := range r.pending {
			if k > 0 && r.pending[k-1] == t {
				continue
			}
			if i := r.find(t); i >= 0 && r.Entries[i].Token == t {
				sign(i)
			}
		}
	}
	r.pending = r.pending[:0]
	for i := range r.Votes {
		if v := &r.Votes[i]; v.Voter == self && v.Sig == zero {
			v.Sig = key.Sign(priv, voteDomain, r.voteMessage(v.Voter, v.Dead, v.Seq, v.Issuer))
			signed++
		}
	}
	for i := range r.Transfers {
		t := &r.Transfers[i]
		if t.Issuer != self || t.Sig != zero {
			continue
		}
		for j := range t.Cert {
			c := &t.Cert[j]
			if c.Voter != self || c.Sig != zero {
				continue
			}
			if v, ok := r.vote(self, t.Dead); ok && v.Seq == c.Seq && v.Issuer == t.Issuer {
				c.Sig = v.Sig
			} else {
				c.Sig = key.Sign(priv, voteDomain, r.voteMessage(self, t.Dead, c.Seq, t.Issuer))
			}
		}
		if t.Done && len(t.Cert) > maxPartCertVotes {
			// Sliced (parts.go): a claim. A smaller certificate goes
			// whole, signed with it, as earlier versions verify it.
			t.Sig = key.Sign(priv, claimDomain, r.claimMessage(t))
		} else {
			t.Sig = key.Sign(priv, transferDomain, r.transferMessage(t))
		}
		signed++
	}
	return signed
}

// verifier checks signatures, remembering the outcome: a ring message
// repeats mostly what the last one said, and a signature check costs about
// 100 µs while a hash costs about 1.
type verifier struct {
	seen   map[[32]byte]bool
	verify func(p key.Public, domain string, msg []byte, sig *key.Signature) error
}

// maxVerified bounds the cache; when full it starts over.
const maxVerified = 1 << 14

func (v *verifier) check(signer key.Public, domain string, msg []byte, sig *key.Signature) bool {
	h := sha256.New()
	h.Write(signer[:])
	h.Write([]byte(domain))
	h.Write(msg)
	h.Write(sig[:])
	var k [32]byte
	h.Sum(k[:0])
	if ok, found := v.seen[k]; found {
		return ok
	}
	verify := v.verify
	if verify == nil {
		verify = key.Verify
	}
	ok := verify(signer, domain, msg, sig) == nil
	if v.seen == nil || len(v.seen) >= maxVerified {
		v.seen = make(map[[32]byte]bool)
	}
	v.seen[k] = ok
	return ok
}

func (v *verifier) entry(r *Ring, e *Entry) bool {
	return v.check(e.Writer, entryDomain, r.entryMessage(e), &e.Sig)
}

func (v *verifier) vote(r *Ring, x *Vote) bool {
	return v.check(x.Voter, voteDomain, r.voteMessage(x.Voter, x.Dead, x.Seq, x.Issuer), &x.Sig)
}

// transfer checks the issuer's signature (a Done one as a claim, or as a
// transfer over its whole certificate); cert the votes of a certificate or
// of a slice of one: every vote signed by its voter, for this issuer, none
// by the dead peer.
func (v *verifier) transfer(r *Ring, t *Transfer) bool {
	if t.Done && v.check(t.Issuer, claimDomain, r.claimMessage(t), &t.Sig) {
		return true
	}
	return v.check(t.Issuer, transferDomain, r.transferMessage(t), &t.Sig)
}

func (v *verifier) cert(r *Ring, t *Transfer) bool {
	if !t.Done {
		return len(t.Cert) == 0
	}
	for i := range t.Cert {
		if !v.certVote(r, t, &t.Cert[i]) {
			return false
		}
	}
	return true
}

func (v *verifier) certVote(r *Ring, t *Transfer, c *CertVote) bool {
	if c.Voter == t.Dead || c.Seq == 0 || c.Seq > MaxVersion {
		return false
	}
	return v.check(c.Voter, voteDomain, r.voteMessage(c.Voter, t.Dead, c.Seq, t.Issuer), &c.Sig)
}
