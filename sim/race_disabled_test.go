//go:build !race

package sim

const churnScale = 1
