package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// debugRawWGLog, set by WEAVEWG_DEBUG_WGLOG=1, turns off the filtering below
// so that every wireguard-go line reaches the logger at debug level.
var debugRawWGLog = os.Getenv("WEAVEWG_DEBUG_WGLOG") == "1"

// wgDroppedFormats are wireguard-go's verbose lines that only repeat: one per
// goroutine start and stop (several per peer, per CPU and per rebind) and
// one per keepalive (every 25 s per peer). Matched on the format string, so
// a dropped line costs no formatting.
var wgDroppedFormats = []string{
	"Routine: ",
	" - Sending keepalive packet",
	" - Receiving keepalive packet",
}

// errorEvery is how often one wireguard-go error format may be logged.
// wireguard-go reports a failing send once per packet batch ("Failed to send
// data packets"), which on a dead path is many lines a second.
const errorEvery = 10 * time.Second

// newWGLogger adapts wireguard-go's printf logger onto slog: Verbosef goes to
// Debug and Errorf to Error. Known flood lines are dropped and each error
// format string is rate limited, with the number of lines it swallowed
// reported on the next line let through.
func newWGLogger(l *slog.Logger) *device.Logger {
	l = l.With("component", "wireguard-go")
	rl := &rateLimiter{last: make(map[string]rateState)}
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if !debugRawWGLog && droppedWGFormat(format) {
				return
			}
			if !l.Enabled(context.Background(), slog.LevelDebug) {
				return
			}
			l.Debug(fmt.Sprintf(format, args...))
		},
		Errorf: func(format string, args ...any) {
			ok, suppressed := rl.allow(format, time.Now())
			if !ok {
				return
			}
			if suppressed > 0 {
				l.Error(fmt.Sprintf(format, args...), "suppressed", suppressed)
				return
			}
			l.Error(fmt.Sprintf(format, args...))
		},
	}
}

func droppedWGFormat(format string) bool {
	for _, s := range wgDroppedFormats {
		if strings.Contains(format, s) {
			return true
		}
	}
	return false
}

type rateState struct {
	at         time.Time
	suppressed int
}

// rateLimiter lets one line per format string through every errorEvery.
type rateLimiter struct {
	mu   sync.Mutex
	last map[string]rateState // by format string
}

func (r *rateLimiter) allow(format string, now time.Time) (ok bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, seen := r.last[format]
	if seen && now.Sub(s.at) < errorEvery {
		s.suppressed++
		r.last[format] = s
		return false, 0
	}
	r.last[format] = rateState{at: now}
	return true, s.suppressed
}
