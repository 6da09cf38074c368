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
