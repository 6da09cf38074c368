package ipam

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/weavewg/weavewg/types/key"
)

// TestRmpeerAtScale (issue 18): rmpeer among about 200 owners, past the
// 160 votes that were once the vote table's bound for the network's life
// (rmpeer was refused there, ErrTooManyElectors). Two peers run rmpeer of
// the same dead peer at once; every peer must end with the same ring, in
// which exactly one of the two owns the dead peer's space, and with its
// vote table empty again (the votes of a concluded transfer are
// forgotten). The first dead peer was only cut off: when it comes back it
// concludes its own removal from the certificate (more votes than one
// part carries, so it arrives in slices) and owns nothing. A second
// rmpeer then completes too: the first no longer fills the table.
func TestRmpeerAtScale(t *testing.T) {
	n := 201
	if testing.Short() || raceEnabled {
		n = 171
	}
	if v, err := strconv.Atoi(os.Getenv("IPAM_RMPEER_OWNERS")); err == nil && v > 2 {
		n = v // a larger one-off run (docs/architecture.md quotes 201 and 401)
	}
	j := newJoinSim(t, 7, n)
	if err := j.build(100, 60); err != nil {
		t.Fatal(err)
	}
	s := j.sim
	for round, c := range []struct {
		dead, issuer1, issuer2 int
		returns                bool
	}{{n - 1, 1, n / 2, true}, {n / 3, 2, 2, false}} {
		dead := s.peers[c.dead]
		deadSpans := len(dead.a.View().Ring.Spans(dead.key))
		dead.dead = true // cut off: nothing reaches it, and it reaches nobody
		reachBefore := s.reach[c.dead]
		s.reach[c.dead] = map[int]bool{}
		if !c.returns {
			dead.a.Close()
		}
		for _, p := range s.alive() {
			delete(s.reach[p.i], c.dead)
		}
		setReach(s)
		sent, bytes := s.sent, s.sentBytes
		for _, i := range []int{c.issuer1, c.issuer2} {
			if err := s.peers[i].a.RemovePeer(dead.key); err != nil {
				t.Fatalf("round %d: rmpeer of peer %d on peer %d among %d owners: %v", round, c.dead, i, n, err)
			}
		}
		why, took := "", 0
		for range 120 {
			took++
			j.second()
			if why = rmpeerSettled(s, dead.key); why == "" {
				break
			}
		}
		if why != "" {
			t.Fatalf("round %d: rmpeer of peer %d (%d spans) among %d owners, after %d s: %s", round, c.dead, deadSpans, n, took, why)
		}
		s.check(round)
		heir, _ := s.peers[0].a.View().Ring.doneTransfer(dead.key)
		if heir != s.peers[c.issuer1].key && heir != s.peers[c.issuer2].key {
			t.Fatalf("round %d: the space went to %s, not to an issuer", round, heir.Name())
		}
		t.Logf("round %d: rmpeer of peer %d (%d spans) among %d owners settled in %d s: %d messages, %d bytes (%.1f messages per peer)",
			round, c.dead, deadSpans, n-round, took, s.sent-sent, s.sentBytes-bytes, float64(s.sent-sent)/float64(n-round))
		if !c.returns {
			continue
		}
		// The partition heals: it meets its neighbours again.
		dead.dead = false
		s.reach[c.dead] = reachBefore
		for q := range reachBefore {
			s.reach[q][c.dead] = true
		}
		setReach(s)
		for q := range reachBefore {
			if j.edges[[2]int{c.dead, q}] {
				dead.a.NewNeighbour(s.peers[q].key)
				s.peers[q].a.NewNeighbour(dead.key)
			}
		}
		for took = 0; took < 60; took++ {
			j.second()
			if why = rmpeerSettled(s, dead.key); why == "" {
				break
			}
		}
		if why != "" {
			t.Fatalf("round %d: peer %d came back, after %d s: %s", round, c.dead, took, why)
		}
		s.check(round)
		t.Logf("round %d: peer %d came back and concluded its removal in %d s", round, c.dead, took)
		dead.dead = true // gone for good now
		dead.a.Close()
		s.reach[c.dead] = map[int]bool{}
		for _, p := range s.alive() {
			delete(s.reach[p.i], c.dead)
		}
		setReach(s)
	}
}

// setReach tells every alive peer whom it reaches (s.reach).
func setReach(s *sim) {
	for _, p := range s.alive() {
		var keys []key.Public
		for q := range s.reach[p.i] {
			keys = append(keys, s.peers[q].key)
		}
		p.a.SetPeers(keys)
	}
}

// rmpeerSettled says why the alive peers do not yet agree that dead's space
// went to one peer, or "".
func rmpeerSettled(s *sim, dead key.Public) string {
	alive := s.alive()
	for _, p := range alive {
		if p.key == dead && len(p.a.View().Ring.Spans(dead)) > 0 {
			return "the removed peer, back, still owns space in its own ring"
		}
	}
	r0 := alive[0].a.View().Ring
	for _, p := range alive {
		r := p.a.View().Ring
		if sp := r.Spans(dead); len(sp) > 0 {
			return fmt.Sprintf("peer %d still routes %d spans to the dead peer", p.i, len(sp))
		}
		done := 0
		for _, t := range r.transfersOf(dead) {
			if t.Accepted {
				done++
			}
		}
		if done != 1 {
			return fmt.Sprintf("peer %d concluded %d transfers of the dead peer", p.i, done)
		}
		if len(r.Votes) > 0 {
			return fmt.Sprintf("peer %d still holds %d votes", p.i, len(r.Votes))
		}
		if !r.Equal(r0) {
			return fmt.Sprintf("peer %d's ring differs from peer %d's%s", p.i, alive[0].i, firstDiff(r, r0))
		}
	}
	return ""
}
