package main

import "testing"

// A first change whose topology timed out stops the run even though the
// timed-out wait left a duration in TopoSeconds (that duration used to be
// the stop's test, so the stop never came).
func TestFirstFailedStops(t *testing.T) {
	timedOut := result{N: 100, Changes: []change{{Name: "all joined", TopoSeconds: 120, TopoFailed: true, Err: "not converged after 2m0s: ..."}}}
	if !timedOut.firstFailed() {
		t.Error("a first change whose topology timed out does not stop the run")
	}
	topoOnly := result{N: 100, Changes: []change{{Name: "all joined", TopoSeconds: 3, Seconds: 120, Err: "not converged after 2m0s: ring"}}}
	if topoOnly.firstFailed() {
		t.Error("a first change whose topology converged (IPAM did not) stops the run: the discovery figures are lost")
	}
	if (result{N: 100}).firstFailed() {
		t.Error("a run with no change counts as a failed first change")
	}
}
