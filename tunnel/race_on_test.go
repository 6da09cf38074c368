//go:build race

package tunnel

// raceEnabled: the race detector is on. sync.Pool then drops items at random
// on purpose, so the allocation counts of pooled paths mean nothing.
const raceEnabled = true
