package ipam

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// TestForgedRingChangesNothing is issue 14 acceptance 1 for IPAM: a member
// M of a live network (A, B, C, M, all reachable) sends rings with forged
// entries, votes and transfers. The honest peers keep every range where it
// was, vote for nothing, and count each forgery.
func TestForgedRingChangesNothing(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, b, c, m := openTest(t, n, pk(0), ""), openTest(t, n, pk(1), ""), openTest(t, n, pk(2), ""), openTest(t, n, pk(3), "")
	all := []key.Public{pk(0), pk(1), pk(2), pk(3)}
	for _, x := range []*Allocator{a, b, c, m} {
		x.SetPeers(all)
	}
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	n.run(t)
	for _, x := range []*Allocator{b, c, m} {
		x.WantSpace()
		n.run(t)
	}
	if _, err := b.Allocate("victim"); err != nil {
		t.Fatal(err)
	}
	n.run(t)
	honest := []*Allocator{a, b, c}
	before := map[key.Public]*Ring{}
	for _, x := range honest {
		before[x.self] = x.View().Ring
	}
	bSpans := a.View().Ring.Spans(pk(1))
	if len(bSpans) == 0 {
		t.Fatal("B got no space")
	}
	mPriv := privOf(pk(3))
	victim := bSpans[0]

	// forge returns a message made from M's ring by f, M's own items
	// signed by M.
	forge := func(f func(r *Ring)) []byte {
		t.Helper()
		r := m.View().Ring
		f(r)
		r.signPending(pk(3), mPriv)
		msg, err := AppendRingMessage(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	bEntry := func(r *Ring) *Entry { return &r.Entries[r.find(victim.First)] }
	signAs := func(r *Ring, e *Entry) { e.Sig = key.Sign(mPriv, entryDomain, r.entryMessage(e)) }
	voteOf := func(r *Ring, voter, dead, issuer key.Public, seq uint32) Vote {
		v := Vote{Voter: voter, Dead: dead, Seq: seq, Issuer: issuer}
		v.Sig = key.Sign(mPriv, voteDomain, r.voteMessage(voter, dead, seq, issuer)) // M's key, whoever the voter
		return v
	}
	doneClaim := func(r *Ring, cert []CertVote) {
		tr := Transfer{Dead: pk(1), Issuer: pk(3), Done: true, Cert: cert}
		i, _ := r.transferIndex(pk(1), pk(3))
		r.Transfers = slices.Insert(r.Transfers, i, tr)
	}
	mVote := func(r *Ring) CertVote {
		return CertVote{Voter: pk(3), Seq: 1, Sig: key.Sign(mPriv, voteDomain, r.voteMessage(pk(3), pk(1), 1, pk(3)))}
	}

	tests := []struct {
		name    string
		msg     []byte
		counter string
	}{
		{"entry of B signed as B with M's key", forge(func(r *Ring) {
			e := bEntry(r)
			e.Owner, e.Version = pk(3), e.Version+1
			signAs(r, e)
		}), "ipam_forged_entry"},
		{"entry of B taken by M, signed by M", forge(func(r *Ring) {
			e := bEntry(r)
			e.Owner, e.Version, e.Writer, e.Sig = pk(3), e.Version+5, pk(3), key.Signature{}
		}), "ipam_entry_unauthorized"},
		{"new token in B's range, owned and signed by M", forge(func(r *Ring) {
			r.insertToken(Entry{Token: victim.First + 1, Owner: pk(3), Version: 1, Writer: pk(3)})
		}), "ipam_entry_unauthorized"},
		{"vote of A for M, signed with M's key", forge(func(r *Ring) {
			r.Votes = append(r.Votes, voteOf(r, pk(0), pk(1), pk(3), 1))
			slices.SortFunc(r.Votes, cmpVote)
		}), "ipam_forged_vote"},
		{"transfer issued by A, signed with M's key", forge(func(r *Ring) {
			tr := Transfer{Dead: pk(1), Issuer: pk(0), Done: false}
			tr.Sig = key.Sign(mPriv, transferDomain, r.transferMessage(&tr))
			r.Transfers = append(r.Transfers, tr)
			slices.SortFunc(r.Transfers, cmpTransfer)
		}), "ipam_forged_transfer"},
		{"done transfer of live B to M, certified by a vote forged for A", forge(func(r *Ring) {
			forged := voteOf(r, pk(0), pk(1), pk(3), 1)
			cert := []CertVote{{Voter: pk(0), Seq: 1, Sig: forged.Sig}, mVote(r)}
			doneClaim(r, cert)
		}), "ipam_forged_certificate"},
		{"done transfer of live B to M, certified by M alone", forge(func(r *Ring) {
			doneClaim(r, []CertVote{mVote(r)})
		}), "ipam_done_refused_live"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			was := map[key.Public]uint64{}
			for _, x := range honest {
				was[x.self] = x.Status().Counters[tt.counter]
			}
			for _, x := range honest {
				if err := x.HandleMessage(pk(3), tt.msg); err != nil {
					t.Fatalf("peer %s: %v", x.self.Name(), err)
				}
				n.run(t)
			}
			for range 3 { // let the honest peers step and gossip: still nothing
				for _, y := range honest {
					y.Tick()
					y.Gossip()
				}
				n.run(t)
			}
			for _, x := range honest {
				if got := x.Status().Counters[tt.counter]; got <= was[x.self] {
					t.Errorf("peer %s: %s stayed %d", x.self.Name(), tt.counter, got)
				}
			}
			for _, x := range honest {
				r := x.View().Ring
				if !slices.Equal(r.Spans(pk(1)), before[x.self].Spans(pk(1))) || len(r.Spans(pk(3))) != len(before[x.self].Spans(pk(3))) {
					t.Errorf("peer %s: ranges changed: B %v, M %v", x.self.Name(), r.Spans(pk(1)), r.Spans(pk(3)))
				}
				for _, tr := range r.Transfers {
					if tr.Accepted {
						t.Errorf("peer %s accepted a transfer of %s to %s", x.self.Name(), tr.Dead.Name(), tr.Issuer.Name())
					}
				}
				for _, v := range r.Votes {
					if v.Voter != pk(3) {
						t.Errorf("peer %s holds a vote of %s", x.self.Name(), v.Voter.Name())
					}
				}
				if o, _ := r.Owner(u2a(victim.First + 1)); o != pk(1) {
					t.Errorf("peer %s: B's address %v owned by %s", x.self.Name(), u2a(victim.First+1), o.Name())
				}
			}
			if addrs := b.View().Allocs; len(addrs) != 1 {
				t.Errorf("B's allocations: %v", addrs)
			}
			for p, ps := range prefixesOf(a) {
				if p == pk(3) && slices.ContainsFunc(ps, func(pr netip.Prefix) bool { return pr.Contains(u2a(victim.First)) }) {
					t.Errorf("A routes B's range to M: %v", ps)
				}
			}
		})
	}
}

func prefixesOf(a *Allocator) map[key.Public][]netip.Prefix {
	out := map[key.Public][]netip.Prefix{}
	for _, p := range a.Status().Peers {
		out[p.Peer] = a.Prefixes(p.Peer)
	}
	return out
}

// TestDoneNeedsOwnVote: a Done claim with a valid certificate is taken by
// a peer that voted for the issuer, and not by one that never did (it can
// reach the dead peer), nor by the dead peer while another owner's vote is
// missing from the certificate.
func TestDoneNeedsOwnVote(t *testing.T) {
	base := mustRing(t)
	base.SeedTo(pk(0), 1)
	q := uint32(1 << 18)
	first := base.span().First
	for i := 1; i < 4; i++ {
		if err := base.Grant(pk(0), pk(i), Span{first + uint32(i)*q, first + uint32(i+1)*q - 1}); err != nil {
			t.Fatal(err)
		}
	}
	issuer := base.Clone()
	if err := issuer.RemovePeer(pk(1), pk(3)); err != nil {
		t.Fatal(err)
	}
	// Peer 0 votes (it cannot reach 3); peer 2 can reach 3 and does not.
	voter := base.Clone()
	voter.Merge(wire(issuer))
	voter.StepTransfers(pk(0), []key.Public{pk(1), pk(2)})
	abstainer := base.Clone()
	abstainer.Merge(wire(issuer))
	if abstainer.StepTransfers(pk(2), []key.Public{pk(0), pk(1), pk(3)}) {
		t.Fatal("a peer that reaches the dead peer voted")
	}
	issuer.Merge(wire(voter))
	issuer.StepTransfers(pk(1), []key.Public{pk(0)}) // 2 is not reachable, and owns space: no completion
	if issuer.removed(pk(3)) {
		t.Fatal("completed without the vote of an owner")
	}
	// Let 2's abstention end (3 is gone for it too), then complete.
	abstainer.StepTransfers(pk(2), []key.Public{pk(0), pk(1)})
	issuer.Merge(wire(abstainer))
	issuer.StepTransfers(pk(1), []key.Public{pk(0), pk(2)})
	if !issuer.removed(pk(3)) {
		t.Fatal("not completed with every vote")
	}
	tests := []struct {
		name string
		self key.Public
		ring *Ring
		want bool
	}{
		{"voter", pk(0), voter, true},
		{"dead peer, every owner voted", pk(3), base.Clone(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.ring.Merge(wire(issuer))
			tt.ring.StepTransfers(tt.self, nil)
			if got := tt.ring.removed(pk(3)); got != tt.want {
				t.Fatalf("removed = %v, want %v", got, tt.want)
			}
		})
	}
	// A claim whose certificate lacks an owner the dead peer knows.
	partial := issuer.Clone()
	k, _ := partial.transferIndex(pk(3), pk(1))
	partial.Transfers[k].Cert = slices.DeleteFunc(slices.Clone(partial.Transfers[k].Cert), func(c CertVote) bool { return c.Voter == pk(2) })
	partial.Transfers[k].Accepted = false
	dead := base.Clone()
	dead.Merge(wire(partial))
	dead.StepTransfers(pk(3), nil)
	if dead.removed(pk(3)) {
		t.Fatal(fmt.Sprintf("the dead peer took a certificate without owner %s", pk(2).Name()))
	}
}

// wire is r as another peer receives it: without its holder's conclusions.
func wire(r *Ring) *Ring {
	c := r.Clone()
	for i := range c.Transfers {
		c.Transfers[i].Accepted = false
	}
	return c
}

// TestLaggingPeerCatchesUpFromOwner: R missed A handing its entry to B
// (A left); B's later state of it (written by B) is refused from B, whom R
// does not know as the owner, and taken when A, the owner R knows, sends
// its ring (A vouches for what became of its space).
func TestLaggingPeerCatchesUpFromOwner(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, b, r := openTest(t, n, pk(0), ""), openTest(t, n, pk(1), ""), openTest(t, n, pk(2), "")
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	n.run(t)
	delete(n.peers, pk(2)) // R is cut off
	a.SetPeers([]key.Public{pk(1)})
	b.SetPeers([]key.Public{pk(0)})
	if heir, err := a.Leave(); err != nil || heir != pk(1) {
		t.Fatalf("leave: %s %v", heir.Name(), err)
	}
	n.run(t)
	b.Tick() // B publishes its free count: a state of the entry written by B
	n.run(t)
	probe := netip.MustParseAddr("10.32.0.5")
	if o, _ := b.View().Ring.Owner(probe); o != pk(1) {
		t.Fatalf("B does not own %v", probe)
	}
	if err := r.HandleMessage(pk(1), b.RingMessage()); err != nil {
		t.Fatal(err)
	}
	if o, _ := r.View().Ring.Owner(probe); o != pk(0) {
		t.Errorf("R took B's word for A's space: owner %s", o.Name())
	}
	if r.Status().Counters["ipam_entry_unauthorized"] == 0 {
		t.Error("the refusal was not counted")
	}
	if err := r.HandleMessage(pk(0), a.RingMessage()); err != nil {
		t.Fatal(err)
	}
	if o, _ := r.View().Ring.Owner(probe); o != pk(1) {
		t.Errorf("R did not take A's word: owner %s", o.Name())
	}
	if !entriesEqual(r.View().Ring, b.View().Ring) {
		t.Error("R's entries differ from B's")
	}
}

// TestOversizedCertificateRefused: a member's Done claims certified by the
// (validly signed) votes of made-up peers each fit the bounds, but merged
// into a receiver's ring that already keeps certificates up to near
// MaxCertVotes they would exceed them; the receiver refuses the message
// that would, counts it, and its ring still encodes.
func TestOversizedCertificateRefused(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, m := openTest(t, n, pk(0), ""), openTest(t, n, pk(3), "")
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	n.run(t)
	claim := func(dead key.Public) []byte {
		t.Helper()
		r := m.View().Ring
		cert := []CertVote{{Voter: pk(3), Seq: 1, Sig: key.Sign(privOf(pk(3)), voteDomain, r.voteMessage(pk(3), dead, 1, pk(3)))}}
		for range 30 {
			k, err := key.NewPrivate()
			if err != nil {
				t.Fatal(err)
			}
			p := k.Public()
			cert = append(cert, CertVote{Voter: p, Seq: 1, Sig: key.Sign(k, voteDomain, r.voteMessage(p, dead, 1, pk(3)))})
		}
		slices.SortFunc(cert, func(x, y CertVote) int { return bytes.Compare(x.Voter[:], y.Voter[:]) })
		r.Transfers = []Transfer{{Dead: dead, Issuer: pk(3), Done: true, Cert: cert}}
		r.signPending(pk(3), privOf(pk(3)))
		msg, err := AppendRingMessage(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	if err := a.HandleMessage(pk(3), claim(pk(1))); err != nil {
		t.Fatal(err)
	}
	if a.Status().Counters["ipam_ring_full"] != 0 || len(a.View().Ring.Transfers) != 1 {
		t.Fatal("the first claim, within the bounds, was not stored")
	}
	// The receiver's kept certificates near the bound (made-up voters: the
	// receiver's own state is not checked again).
	// Voters from a pool of 4,000, so the keys stay within MaxPeers.
	a.mu.Lock()
	for k := 0; a.ring.certVotes() < MaxCertVotes-20; k++ {
		var dead key.Public
		dead[0], dead[1] = 0xfe, byte(k)
		tr := Transfer{Dead: dead, Issuer: pk(3), Done: true, Accepted: true, Sig: key.Signature{1}}
		for i := 0; i < 4000 && a.ring.certVotes()+len(tr.Cert) < MaxCertVotes-20; i++ {
			var voter key.Public
			voter[0], voter[1], voter[2] = 0xff, byte(i>>8), byte(i)
			tr.Cert = append(tr.Cert, CertVote{Voter: voter, Seq: 1, Sig: key.Signature{1}})
		}
		i, _ := a.ring.transferIndex(dead, pk(3))
		a.ring.Transfers = slices.Insert(a.ring.Transfers, i, tr)
	}
	a.mu.Unlock()
	before := a.View().Ring
	if err := a.HandleMessage(pk(3), claim(pk(2))); err != nil {
		t.Fatal(err)
	}
	if a.Status().Counters["ipam_ring_full"] == 0 {
		t.Error("the claim that overflows the ring was not counted")
	}
	if !a.View().Ring.Equal(before) {
		t.Error("the receiver's ring changed")
	}
	if _, err := AppendRing(nil, a.View().Ring); err != nil {
		t.Errorf("the receiver's ring no longer encodes: %v", err)
	}
}
