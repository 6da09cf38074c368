package nat

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// pionLogger turns pion's leveled logger into slog at Debug: pion logs
// every failed check and unanswered STUN server at Warn, which for us is
// the normal course of hole punching (the outcomes are counted instead).
// Trace and Debug are dropped.
type pionLogger struct {
	log *slog.Logger
}

func (l pionLogger) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: l.log.With("pion", scope)}
}

func (l pionLogger) out(msg string) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("ice: " + msg)
	}
}

func (l pionLogger) outf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("ice", "msg", fmt.Sprintf(format, args...))
	}
}

func (pionLogger) Trace(string)                {}
func (pionLogger) Tracef(string, ...any)       {}
func (pionLogger) Debug(string)                {}
func (pionLogger) Debugf(string, ...any)       {}
func (l pionLogger) Info(m string)             { l.out(m) }
func (l pionLogger) Infof(f string, a ...any)  { l.outf(f, a...) }
func (l pionLogger) Warn(m string)             { l.out(m) }
func (l pionLogger) Warnf(f string, a ...any)  { l.outf(f, a...) }
func (l pionLogger) Error(m string)            { l.out(m) }
func (l pionLogger) Errorf(f string, a ...any) { l.outf(f, a...) }

var _ logging.LoggerFactory = pionLogger{}
