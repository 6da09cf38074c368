package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// TestRecentLogKeepsLastWarnings: warnings and errors are kept with their
// fields (those given to With too), oldest first, at most recentWarnings;
// lower levels are not kept but still reach the next handler when it
// wants them, and nothing it would drop is printed.
func TestRecentLogKeepsLastWarnings(t *testing.T) {
	var out bytes.Buffer
	var r recentLog
	log := slog.New(newRecentHandler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelError}), &r))
	part := log.With("part", "dns").WithGroup("up")
	part.Info("not kept")
	part.Warn("upstream down", "addr", "192.0.2.250:53")
	log.Error("boom", "err", "disk full")
	got := r.snapshot()
	if len(got) != 2 || got[0].Message != "upstream down" || got[0].Level != "WARN" ||
		got[0].Fields["part"] != "dns" || got[0].Fields["up.addr"] != "192.0.2.250:53" ||
		got[1].Message != "boom" || got[1].Fields["err"] != "disk full" {
		t.Fatalf("kept %+v", got)
	}
	if s := out.String(); strings.Contains(s, "upstream down") || !strings.Contains(s, "boom") {
		t.Errorf("next handler (level error) got %q: want only the error", s)
	}
	for i := range recentWarnings + 5 {
		log.Warn(fmt.Sprint("w", i))
	}
	got = r.snapshot()
	if len(got) != recentWarnings || got[0].Message != "w5" || got[len(got)-1].Message != fmt.Sprint("w", recentWarnings+4) {
		t.Errorf("after overflow: %d kept, first %q last %q", len(got), got[0].Message, got[len(got)-1].Message)
	}
}
