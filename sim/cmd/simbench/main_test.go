package main

import (
	"testing"
	"time"
)

// An N-th join whose topology timed out stops the run even though the
// timed-out wait left a duration in TopoSeconds (that duration used to be
// the stop's test, so the stop never came); so does a build that did not
// agree, and a failed -burst row does not.
func TestFirstFailedStops(t *testing.T) {
	timedOut := result{N: 100, Changes: []change{{Name: "N-th joins", TopoSeconds: 120, TopoFailed: true, Err: "not converged after 2m0s: ..."}}}
	if !timedOut.firstFailed() {
		t.Error("an N-th join whose topology timed out does not stop the run")
	}
	if !(result{N: 100, Changes: []change{{Name: "building", TopoFailed: true}}}).firstFailed() {
		t.Error("a build that did not agree does not stop the run")
	}
	burstOnly := result{N: 100, Changes: []change{{Name: "N launched", TopoFailed: true}, {Name: "N-th joins", TopoSeconds: 1}}}
	if burstOnly.firstFailed() {
		t.Error("a failed burst stops the run although the built mesh formed")
	}
	topoOnly := result{N: 100, Changes: []change{{Name: "N-th joins", TopoSeconds: 3, Seconds: 120, Err: "not converged after 2m0s: ring"}}}
	if topoOnly.firstFailed() {
		t.Error("a first change whose topology converged (IPAM did not) stops the run: the discovery figures are lost")
	}
	if (result{N: 100}).firstFailed() {
		t.Error("a run with no change counts as a failed first change")
	}
}

// The build's backoff: a slow batch halves the next, never below
// minBatch (nor above -batch when -batch is smaller), a quick one doubles
// it back up to -batch, one in between keeps it.
func TestNextBatch(t *testing.T) {
	const timeout = 120 * time.Second
	for _, tt := range []struct {
		size, most int
		took       time.Duration
		want       int
	}{
		{100, 100, 40 * time.Second, 50},
		{12, 100, 40 * time.Second, 10},
		{10, 100, 119 * time.Second, 10},
		{4, 4, 40 * time.Second, 4},
		{25, 100, 5 * time.Second, 50},
		{80, 100, 5 * time.Second, 100},
		{25, 100, 20 * time.Second, 25},
	} {
		if got := nextBatch(tt.size, tt.most, tt.took, timeout); got != tt.want {
			t.Errorf("batch of %d (at most %d) agreed in %v: next %d, want %d", tt.size, tt.most, tt.took, got, tt.want)
		}
	}
}

// A change's frames until agreement split into its own gossip, its own
// channel messages and the background, each kind less its idle rate for
// as long as the change took: the lead's 1,000th join at fc682d6 (178
// frames/N in 17.16 s, 142.4 of them channel messages, the still mesh
// at 4.32 frames a peer a second, 4.57 of them channel) was read as a
// join's gossip growing 5x from N=300; its own gossip was about 35.
func TestFramePartsLessBackground(t *testing.T) {
	const n, peers, secs = 1000, 1000.0, 17.16
	c := change{MsgsOverN: 177.8, ChannelMsgsOverN: 142.4, TopoSeconds: 8.44, Seconds: secs}
	c.BackgroundMsgsOverN = background(4.32, peers, secs, n)
	c.BackgroundChannelMsgsOverN = background(4.30, peers, secs, n)
	if got := c.BackgroundMsgsOverN; got < 74 || got > 74.2 {
		t.Errorf("background %.2f frames/N, want 4.32 × 17.16 s = 74.1", got)
	}
	if got := c.ownGossipOverN(); got < 35 || got > 35.5 {
		t.Errorf("own gossip %.2f frames/N, want 177.8 - 142.4 - (74.1 - 73.8) = 35.1", got)
	}
	if got := c.ownChannelOverN(); got < 68.5 || got > 68.8 {
		t.Errorf("own channel %.2f frames/N, want 142.4 - 73.8 = 68.6", got)
	}
	if background(4.32, peers, 0, n) != 0 || background(4.32, peers, 1, 0) != 0 {
		t.Error("a change that took no time, or no mesh, has a background")
	}
	if got := (change{MsgsOverN: 10, ChannelMsgsOverN: 8, BackgroundMsgsOverN: 5}).ownGossipOverN(); got != 0 {
		t.Errorf("own gossip %.2f: a background larger than the gossip left a negative part", got)
	}
}
