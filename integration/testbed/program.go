package testbed

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Program is the TB of a program (the demo, a benchmark) rather than a test:
// Fatalf panics with a value Run recovers; cleanups run once, last first,
// from Run's exit path or from the signal handler, and never twice at once.
type Program struct {
	Verbose bool

	mu       sync.Mutex
	cleanups []func()
	done     bool // cleanups have started; later registrations run at once
	failed   bool

	interrupted atomic.Bool
	once        sync.Once
	finished    chan struct{} // closed when the cleanups have all run
}

type programFatal struct{ msg string }

// Helper does nothing: a program has no call-site reporting.
func (p *Program) Helper() {}

// Logf prints every step with Verbose, otherwise only waits and surprises.
func (p *Program) Logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if p.Verbose || strings.Contains(msg, "waiting") || strings.Contains(msg, "exited") || strings.Contains(msg, "did not") {
		fmt.Fprintf(os.Stderr, "  · %s\n", msg)
	}
}

// Fatalf stops the program's run function; Run reports msg and fails.
func (p *Program) Fatalf(format string, args ...any) {
	p.mu.Lock()
	p.failed = true
	p.mu.Unlock()
	panic(programFatal{fmt.Sprintf(format, args...)})
}

// Failed reports whether the run failed (the bed then shows daemon logs).
func (p *Program) Failed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

// Cleanup registers f to run at the end.
func (p *Program) Cleanup(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		f()
		return
	}
	p.cleanups = append(p.cleanups, f)
}

func (p *Program) runCleanups() {
	p.once.Do(func() {
		p.mu.Lock()
		p.done = true
		fs := p.cleanups
		p.cleanups = nil
		p.mu.Unlock()
		for i := len(fs) - 1; i >= 0; i-- {
			func() {
				defer func() {
					if r := recover(); r != nil {
						fmt.Fprintf(os.Stderr, "cleanup: %v\n", r)
					}
				}()
				fs[i]()
			}()
		}
		close(p.finished)
	})
	<-p.finished
}

// RunProgram runs run with a Program and tears everything down after it,
// also on SIGINT/SIGTERM (then the process exits 130). It returns the exit
// code: 0 when run returned true, 1 when it returned false or failed.
func RunProgram(verbose bool, run func(p *Program) bool) int {
	p := &Program{Verbose: verbose, finished: make(chan struct{})}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigc
		p.interrupted.Store(true)
		fmt.Fprintf(os.Stderr, "\n%v: tearing down...\n", s)
		p.runCleanups()
		fmt.Fprintln(os.Stderr, "torn down")
		os.Exit(130)
	}()
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				switch f, ok := r.(programFatal); {
				case p.interrupted.Load():
					// The teardown pulled the bed from under run; say nothing.
				case ok:
					fmt.Fprintf(os.Stderr, "\nFAILED: %s\n", f.msg)
				default:
					fmt.Fprintf(os.Stderr, "\npanic: %v\n", r)
				}
				code = 1
			}
		}()
		if !run(p) {
			code = 1
		}
	}()
	if code != 0 {
		p.mu.Lock()
		p.failed = true
		p.mu.Unlock()
	}
	if p.interrupted.Load() {
		p.runCleanups() // the handler's; wait for it, it exits 130
		select {}
	}
	signal.Stop(sigc)
	fmt.Fprintln(os.Stderr, "\ntearing down...") // stdout is for results (--json)
	p.runCleanups()
	return code
}
