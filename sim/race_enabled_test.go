//go:build race

package sim

// Under the race detector every signature check and handshake is ten times
// slower; the churn runs at half the size so `make test` stays in minutes.
const churnScale = 2
