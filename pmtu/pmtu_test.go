package pmtu

import (
	"slices"
	"testing"
	"time"
)

func TestFromUnderlay(t *testing.T) {
	for _, c := range []struct {
		name     string
		underlay int
		ipv6     bool
		want     int
	}{
		{"ethernet v4", 1500, false, 1404},
		{"google cloud", 1460, false, 1364},
		{"interconnect", 1380, false, 1284},
		{"ethernet v6", 1500, true, 1384},
		{"jumbo", 9000, false, 8904},
		{"tiny link floors at 576", 600, false, MinMTU},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := FromUnderlay(c.underlay, c.ipv6); got != c.want {
				t.Fatalf("FromUnderlay(%d, %v) = %d, want %d", c.underlay, c.ipv6, got, c.want)
			}
		})
	}
	if DefaultMTU != 1404 {
		t.Fatalf("DefaultMTU = %d", DefaultMTU)
	}
	// A probe of the largest payload of a link proves what FromUnderlay says.
	for _, m := range []int{1500, 1460, 1400, 1380} {
		if FromPayload(PayloadFor(m, false)) != FromUnderlay(m, false) {
			t.Fatalf("payload and underlay arithmetic disagree at %d", m)
		}
	}
}

func TestDecide(t *testing.T) {
	for _, c := range []struct {
		name       string
		tun, route int
		probed     int
		want       int
		wantSrc    Source
	}{
		{"nothing smaller known", 1404, 1500, 1472, 1404, SourceLink},
		{"route unknown, probe full", 1404, 0, 1472, 1404, SourceLink},
		{"icmp taught the kernel 1400", 1404, 1400, 1372, 1296, SourceRoute},
		{"black hole: only the probe knows", 1404, 1500, 1372, 1296, SourceProbe},
		{"probe not answered yet", 1404, 1500, 0, 1404, SourceLink},
		{"smaller link of our own", 1404, 1380, 0, 1280, SourceRoute},
		{"relayed towards a 1380 hop", 1404, 1500, 1352, 1280, SourceProbe},
		{"a multiple of 16 already", 1404, 1500, 1412, 1344, SourceProbe},
		{"the tunnel's own is not rounded (padding stops at it)", 1284, 1380, 1352, 1284, SourceLink},
		{"a tiny path floors at 576", 1404, 600, 0, MinMTU, SourceRoute},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, src := Decide(c.tun, c.route, false, c.probed)
			if got != c.want || src != c.wantSrc {
				t.Fatalf("Decide = %d %s, want %d %s", got, src, c.want, c.wantSrc)
			}
		})
	}
}

func TestLadder(t *testing.T) {
	l := Ladder(1472, false)
	if l[0] != 1472 || !slices.IsSortedFunc(l, func(a, b int) int { return b - a }) {
		t.Fatalf("ladder %v: not largest first from 1472", l)
	}
	if !slices.Contains(l, 1432) || !slices.Contains(l, 1372) || !slices.Contains(l, 1352) || l[len(l)-1] != 1252 {
		t.Fatalf("ladder %v lacks Google Cloud (1432), 1400 (1372), 1380 (1352) or the 1280 floor", l)
	}
	if l := Ladder(1352, false); l[0] != 1352 || slices.Contains(l, 1372) {
		t.Fatalf("ladder below a 1380 link %v", l)
	}
	if len(Ladder(8972, false)) > MaxLadder {
		t.Fatal("ladder too long")
	}
}

func TestSearch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := Ladder(1472, false)
	s := NewSearch(l, t0)
	// First round: everything.
	got := s.ToProbe(t0, nil)
	if !slices.Equal(got, l) {
		t.Fatalf("first round %v, want the whole ladder %v", got, l)
	}
	if s.ToProbe(t0.Add(100*time.Millisecond), nil) != nil {
		t.Fatal("a second round before FastInterval")
	}
	if s.Largest(t0) != 0 {
		t.Fatal("largest known before any answer")
	}
	// Behind a 1400 black hole: 1372 and smaller answer.
	at := t0.Add(5 * time.Millisecond)
	for _, z := range got {
		if z <= 1372 {
			s.Answered(z, at)
		}
	}
	if s.Largest(at) != 1372 {
		t.Fatalf("largest %d, want 1372", s.Largest(at))
	}
	// Next round probes above 1372, 1372, and the one below only.
	got = s.ToProbe(t0.Add(FastInterval), nil)
	if got[0] != 1472 || got[len(got)-1] != 1352 || slices.Contains(got, 1332) {
		t.Fatalf("second round %v", got)
	}
	// The path grows: 1472 answers.
	s.Answered(1472, t0.Add(FastInterval+time.Millisecond))
	if s.Largest(t0.Add(2*FastInterval)) != 1472 {
		t.Fatal("growth not taken")
	}
	// Steady state: rounds slow down, and a path that stops answering at
	// 1472 falls back to the next size once 1472's answer is stale.
	now := t0.Add(2 * FastInterval)
	var rounds int
	for i := 0; i < 60; i++ {
		now = now.Add(time.Second)
		if r := s.ToProbe(now, nil); r != nil {
			rounds++
			for _, z := range r {
				if z != 1472 {
					s.Answered(z, now)
				}
			}
		}
	}
	if rounds > 60/int(SlowInterval/time.Second)+FastRounds {
		t.Fatalf("%d rounds in 60 s", rounds)
	}
	if got := s.Largest(now); got != 1464 {
		t.Fatalf("after the path shrank: largest %d, want 1464 (1492's payload)", got)
	}
	// Answers of sizes not on the ladder are ignored.
	s.Answered(1000, now)
}

// TestSearchBacksOff: a path that answers nothing is probed less and less
// often (each unanswered round doubles the wait, up to MaxBackoff times
// the interval), and one answer brings the rounds back; an answer counts
// by when its probe was sent, so one that comes back a minute late stands
// for a minute-old path.
func TestSearchBacksOff(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := Ladder(1472, false)
	s := NewSearch(l, t0)
	var at []time.Duration
	for now := t0; now.Before(t0.Add(10 * time.Minute)); now = now.Add(100 * time.Millisecond) {
		if s.ToProbe(now, nil) != nil {
			at = append(at, now.Sub(t0))
		}
	}
	want := []time.Duration{0, 1 * time.Second, 3 * time.Second, 7 * time.Second, 15 * time.Second,
		95 * time.Second, 175 * time.Second, 255 * time.Second, 335 * time.Second, 415 * time.Second, 495 * time.Second, 575 * time.Second}
	if !slices.Equal(at, want) {
		t.Fatalf("rounds of a path that never answers at %v, want %v", at, want)
	}
	// A late answer to a probe older than the last round is no answer
	// to it.
	now := t0.Add(655 * time.Second)
	s.Answered(l[len(l)-1], t0.Add(574*time.Second))
	if s.ToProbe(now, nil) == nil || s.Largest(now) != 0 {
		t.Fatalf("a probe sent 81 s ago, answered now: largest %d, want none (older than Valid)", s.Largest(now))
	}
	if s.ToProbe(now.Add(SlowInterval), nil) != nil {
		t.Fatal("backoff ended by an answer to an older round")
	}
	// An answer to the last round ends the backoff.
	s.Answered(l[len(l)-1], now)
	next := now.Add(MaxBackoff * SlowInterval)
	if s.ToProbe(next, nil) == nil {
		t.Fatal("no round when due")
	}
	if s.ToProbe(next.Add(SlowInterval), nil) == nil {
		t.Fatal("still backing off after an answer")
	}
}

// TestSearchWakesWhenThePathComesBack: a search backing off on a path
// that went silent probes at once when the path answers again after a
// silence, and keeps backing off while the path answers its path probes
// all along but not the MTU probes.
func TestSearchWakesWhenThePathComesBack(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := Ladder(1472, false)
	// The path answers its probes every second, never an MTU probe (a
	// starved relay's late answers): the backoff goes on.
	s := NewSearch(l, t0)
	var at []time.Duration
	for now := t0; now.Before(t0.Add(200 * time.Second)); now = now.Add(100 * time.Millisecond) {
		if now.Sub(t0)%time.Second == 0 {
			s.PathHeard(now)
		}
		if s.ToProbe(now, nil) != nil {
			at = append(at, now.Sub(t0))
		}
	}
	want := []time.Duration{0, 1 * time.Second, 3 * time.Second, 7 * time.Second, 15 * time.Second,
		95 * time.Second, 175 * time.Second}
	if !slices.Equal(at, want) {
		t.Fatalf("rounds of a path that answers its path probes but no MTU probe at %v, want %v (the backoff)", at, want)
	}
	// The path is silent from 200 s to 300 s, then answers: a round at
	// once, not at 335 s (the round at 255 s went unanswered).
	s.PathHeard(t0.Add(199 * time.Second))
	if s.ToProbe(t0.Add(255*time.Second), nil) == nil {
		t.Fatal("no round at 255 s")
	}
	back := t0.Add(300 * time.Second)
	if s.ToProbe(back.Add(-time.Second), nil) != nil {
		t.Fatal("a round before it was due while the path was silent")
	}
	s.PathHeard(back)
	if s.ToProbe(back, nil) == nil {
		t.Fatal("no round when the path came back after 101 s of silence")
	}
	// The backoff starts over: the next round one slow interval later.
	if s.ToProbe(back.Add(SlowInterval), nil) == nil {
		t.Fatal("the backoff did not start over after the path came back")
	}
	// A search that backs off from its start wakes on the path's first
	// answer.
	s = NewSearch(l, t0)
	for now := t0; now.Before(t0.Add(20 * time.Second)); now = now.Add(time.Second) {
		s.ToProbe(now, nil)
	}
	s.PathHeard(t0.Add(20 * time.Second))
	if s.ToProbe(t0.Add(20*time.Second), nil) == nil {
		t.Fatal("no round at the path's first answer after unanswered rounds")
	}
}

// TestSearchLastKnown: answers that expired while a pair was idle still
// bound the MTU when it wakes (a black hole does not go away because the
// pair stopped probing), until a new round answers.
func TestSearchLastKnown(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := Ladder(1472, false)
	s := NewSearch(l, t0)
	if s.LastKnown() != 0 {
		t.Fatal("last known before any answer")
	}
	// Behind a 1380 black hole: 1352 and smaller answer, a few ms apart.
	for i, z := range s.ToProbe(t0, nil) {
		if z <= 1352 {
			s.Answered(z, t0.Add(time.Duration(i)*time.Millisecond))
		}
	}
	if s.Largest(t0.Add(time.Second)) != 1352 || s.LastKnown() != 1352 {
		t.Fatalf("largest %d, last known %d; want 1352", s.Largest(t0.Add(time.Second)), s.LastKnown())
	}
	// Idle for ten minutes: nothing probed, the answers expire.
	woke := t0.Add(10 * time.Minute)
	if s.Largest(woke) != 0 {
		t.Fatalf("largest %d after the answers expired, want 0", s.Largest(woke))
	}
	if s.LastKnown() != 1352 {
		t.Fatalf("last known %d after idling, want 1352 (what the path proved)", s.LastKnown())
	}
	// The round on waking finds the path smaller now: that wins.
	for _, z := range s.ToProbe(woke, nil) {
		if z <= 1292 {
			s.Answered(z, woke.Add(time.Millisecond))
		}
	}
	if s.Largest(woke.Add(time.Second)) != 1292 || s.LastKnown() != 1292 {
		t.Fatalf("after a smaller round: largest %d, last known %d; want 1292", s.Largest(woke.Add(time.Second)), s.LastKnown())
	}
	// An old large answer does not outlive a newer round: 1472 answered
	// long before the newest answers is not counted.
	s2 := NewSearch(l, t0)
	s2.Answered(1472, t0)
	s2.Answered(1352, t0.Add(time.Hour))
	if s2.LastKnown() != 1352 {
		t.Fatalf("last known %d, want 1352 (1472's answer is older than Valid before the newest)", s2.LastKnown())
	}
}
