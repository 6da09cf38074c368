package testbed

import (
	"os/exec"
	"regexp"
	"sync"
)

// binaryFlags caches the flags the bed's binaries list in `VERB --help`, so
// that a bed can run a weavewg built before a flag existed (make bench
// comparing builds) by leaving that flag out.
type binaryFlags struct {
	mu    sync.Mutex
	verbs map[[2]string]map[string]bool // binary, verb → flags; nil map: help unreadable
}

var flagName = regexp.MustCompile(`--[a-z0-9][a-z0-9-]*`)

// binaryHasFlag reports whether `bin verb --help` lists flag. When
// the help cannot be read it answers true: the current binary has every
// flag the bed passes.
func (b *Bed) binaryHasFlag(bin, verb, flag string) bool {
	b.flags.mu.Lock()
	defer b.flags.mu.Unlock()
	if b.flags.verbs == nil {
		b.flags.verbs = map[[2]string]map[string]bool{}
	}
	fs, ok := b.flags.verbs[[2]string{bin, verb}]
	if !ok {
		out, err := exec.Command(bin, verb, "--help").CombinedOutput()
		if err == nil {
			fs = map[string]bool{}
			for _, f := range flagName.FindAllString(string(out), -1) {
				fs[f] = true
			}
		}
		b.flags.verbs[[2]string{bin, verb}] = fs
	}
	return fs == nil || fs[flag]
}
