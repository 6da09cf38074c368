package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// benchTB is the testbed.TB of the benchmark: Fatalf panics with a fatal
// value (recovered in main or around an optional stage), cleanups run last in
// first out exactly once, from main's exit path or from the signal handler.
type benchTB struct {
	verbose bool

	mu       sync.Mutex
	cleanups []func()
	done     bool     // cleanups have run; later registrations run at once
	recent   []string // last log lines, shown when something fails
	logFile  io.Writer
}

// fatal is what Fatalf panics with.
type fatal struct{ msg string }

func (f fatal) Error() string { return f.msg }

func (t *benchTB) Helper() {}

func (t *benchTB) Logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	t.mu.Lock()
	t.recent = append(t.recent, line)
	if len(t.recent) > 60 {
		t.recent = t.recent[len(t.recent)-60:]
	}
	w := t.logFile
	t.mu.Unlock()
	stamp := time.Now().Format("15:04:05.000")
	if w != nil {
		fmt.Fprintf(w, "%s %s\n", stamp, line)
	}
	if t.verbose {
		fmt.Fprintf(os.Stderr, "%s %s\n", stamp, line)
	}
}

func (t *benchTB) Fatalf(format string, args ...any) {
	panic(fatal{fmt.Sprintf(format, args...)})
}

func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	if t.done {
		t.mu.Unlock()
		safely(f)
		return
	}
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

// RunCleanups runs every registered cleanup, newest first. Concurrent
// callers (main and the signal handler) each run whatever is left; each
// cleanup runs once.
func (t *benchTB) RunCleanups() {
	for {
		t.mu.Lock()
		t.done = true
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		safely(f)
	}
}

// Recent returns the last log lines.
func (t *benchTB) Recent(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.recent
	if len(r) > n {
		r = r[len(r)-n:]
	}
	return strings.Join(r, "\n")
}

func safely(f func()) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "bench: cleanup: %v\n", r)
		}
	}()
	f()
}

// try runs f, turning a Fatalf into an error; other panics go on up.
func try(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if fe, ok := r.(fatal); ok {
				err = fe
				return
			}
			panic(r)
		}
	}()
	f()
	return nil
}
