package ipam

import (
	"bytes"
	"encoding/hex"
	"slices"
	"strings"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// madeUp returns a made-up key: b0, then i big-endian, then zeros.
func madeUp(b0 byte, i int) (p key.Public) {
	p[0], p[1], p[2] = b0, byte(i>>8), byte(i)
	return p
}

// sliceRing: goldenRing's range and seed with one Done claim of dead
// 01… by issuer 02… whose certificate holds the votes of 257 made-up
// voters c0 0000 … c0 0080 (fixed signature patterns): one vote more than
// a part carries.
func sliceRing(t testing.TB) *Ring {
	r := goldenRing(t)
	r.Votes = nil
	tr := Transfer{Dead: madeUp(1, 0), Issuer: madeUp(2, 0), Done: true, Sig: sigOf(0x44)}
	for i := range maxPartCertVotes + 1 {
		tr.Cert = append(tr.Cert, CertVote{Voter: madeUp(0xc0, i), Seq: 1, Sig: sigOf(0x33)})
	}
	r.Transfers = []Transfer{tr}
	return r
}

// TestGoldenCertificateSlice: a certificate larger than a part goes in
// slices, each with the claim's state; these are the bytes of the second.
func TestGoldenCertificateSlice(t *testing.T) {
	k := func(p key.Public) string { return hex.EncodeToString(p[:]) }
	r := sliceRing(t)
	msgs, err := votesParts(r, nil, r.Transfers, false)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("%d parts, %v", len(msgs), err)
	}
	want := strings.Join([]string{
		"04 04",                      // version 4, type ring part
		"0a200000 0c",                // range 10.32.0.0/12
		k(pk(0)), "0102030405060708", // seed: peer A, id
		"00",                                     // flags: none
		"0003", k(madeUp(1, 0)), k(madeUp(2, 0)), // peer table: the dead peer, the issuer,
		k(madeUp(0xc0, maxPartCertVotes)),        // and the one voter of this slice
		"0000",                                   // no runs
		"0000",                                   // no votes
		"0001",                                   // one transfer
		"0000 0001 01", strings.Repeat("44", 64), // dead → issuer, done, the claim's signature
		"0001 0002 00000001 01", strings.Repeat("33", 64), // certificate slice: one vote, signature inline
	}, "")
	w, err := hex.DecodeString(strings.ReplaceAll(want, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(msgs[1], w) {
		t.Fatalf("got\n%x\nwant\n%x", msgs[1], w)
	}
	// Each slice parses alone, and the slices' union is the certificate.
	var got []CertVote
	for _, m := range msgs {
		pm, err := ParseMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		got, _ = unionCert(got, pm.Part.Ring.Transfers[0].Cert)
	}
	if !slices.Equal(got, r.Transfers[0].Cert) {
		t.Fatalf("the slices' union holds %d votes, want %d", len(got), len(r.Transfers[0].Cert))
	}
}

// TestGoldenClaimMessage: what an issuer signs for a Done claim (its
// certificate is not in it: the claim travels with slices of it).
func TestGoldenClaimMessage(t *testing.T) {
	r := goldenRing(t)
	tr := Transfer{Dead: madeUp(1, 0), Issuer: madeUp(2, 0), Done: true, Cert: []CertVote{{Voter: madeUp(3, 0), Seq: 1}}}
	seed := pk(0)
	want := "0a200000 0c" + hex.EncodeToString(seed[:]) + "0102030405060708" + // prefix: range, seed
		"01" + strings.Repeat("00", 31) + "02" + strings.Repeat("00", 31) + "02" // dead, issuer, state done
	if got := hex.EncodeToString(r.claimMessage(&tr)); got != strings.ReplaceAll(want, " ", "") {
		t.Fatalf("got  %s\nwant %s", got, strings.ReplaceAll(want, " ", ""))
	}
}

// TestCertificateSlicesMerge: a receiver given a signed claim's
// certificate in slices, in any order and repeated, holds the whole
// certificate; a slice with a vote its voter did not sign adds nothing
// of it and is counted.
func TestCertificateSlicesMerge(t *testing.T) {
	n := &loopNet{peers: map[key.Public]*Allocator{}}
	a, m := openTest(t, n, pk(0), ""), openTest(t, n, pk(3), "")
	if err := a.Seed(); err != nil {
		t.Fatal(err)
	}
	n.run(t)
	r := m.View().Ring
	dead := pk(1)
	tr := Transfer{Dead: dead, Issuer: pk(3), Done: true}
	for range maxPartCertVotes + 40 {
		k, err := key.NewPrivate()
		if err != nil {
			t.Fatal(err)
		}
		p := k.Public()
		tr.Cert = append(tr.Cert, CertVote{Voter: p, Seq: 1, Sig: key.Sign(k, voteDomain, r.voteMessage(p, dead, 1, pk(3)))})
	}
	slices.SortFunc(tr.Cert, func(x, y CertVote) int { return bytes.Compare(x.Voter[:], y.Voter[:]) })
	r.Transfers = []Transfer{tr}
	r.signPending(pk(3), privOf(pk(3)))
	msgs, err := votesParts(r, nil, r.Transfers, false)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("%d parts, %v", len(msgs), err)
	}
	for _, i := range []int{1, 0, 1} {
		if err := a.HandleMessage(pk(3), msgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	got := a.View().Ring.Transfers
	if len(got) != 1 || !slices.Equal(got[0].Cert, r.Transfers[0].Cert) {
		t.Fatalf("the receiver holds %d transfers, the first with %d certificate votes; want 1 with %d", len(got), len(got[0].Cert), len(tr.Cert))
	}
	// A forged vote (a made-up voter, a signature of someone else's).
	forged := r.Clone()
	forged.Transfers[0].Cert = []CertVote{{Voter: madeUp(0xfe, 1), Seq: 1, Sig: tr.Cert[0].Sig}}
	fm, err := votesParts(forged, nil, forged.Transfers, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.HandleMessage(pk(3), fm[0]); err != nil {
		t.Fatal(err)
	}
	if a.Counters()["ipam_forged_certificate"] == 0 {
		t.Error("the forged certificate vote was not counted")
	}
	if c := a.View().Ring.Transfers[0].Cert; len(c) != len(tr.Cert) {
		t.Errorf("the forged certificate vote was taken: %d votes", len(c))
	}
}
