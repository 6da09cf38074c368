package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/weavewg/weavewg/types/api"
)

// recentWarnings is how many warnings and errors `weavewg report` carries.
const recentWarnings = 100

// recentLog keeps the last warnings and errors logged, for `weavewg report`:
// a fixed ring, overwritten oldest first, so a flood costs nothing more.
type recentLog struct {
	mu      sync.Mutex
	entries [recentWarnings]api.LogEntry // guarded by mu
	next    int                          // guarded by mu: where the next entry goes
	n       int                          // guarded by mu: entries held
}

func (r *recentLog) add(e api.LogEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries[r.next] = e
	r.next = (r.next + 1) % len(r.entries)
	r.n = min(r.n+1, len(r.entries))
}

// snapshot returns the entries, oldest first.
func (r *recentLog) snapshot() []api.LogEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.LogEntry, 0, r.n)
	for i := range r.n {
		out = append(out, r.entries[(r.next-r.n+i+len(r.entries))%len(r.entries)])
	}
	return out
}

// recentHandler passes every record on to the next handler and copies
// warnings and errors into a recentLog, with their attributes (those given
// to With as well) as strings.
type recentHandler struct {
	next   slog.Handler
	recent *recentLog
	attrs  []slog.Attr // from WithAttrs, group-qualified
	group  string      // prefix for attribute keys, from WithGroup
}

func newRecentHandler(next slog.Handler, r *recentLog) *recentHandler {
	return &recentHandler{next: next, recent: r}
}

func (h *recentHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *recentHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn {
		e := api.LogEntry{Time: rec.Time.UTC().Truncate(time.Millisecond), Level: rec.Level.String(), Message: rec.Message, Fields: map[string]string{}}
		for _, a := range h.attrs {
			e.Fields[a.Key] = a.Value.String()
		}
		rec.Attrs(func(a slog.Attr) bool {
			e.Fields[h.group+a.Key] = a.Value.String()
			return true
		})
		h.recent.add(e)
	}
	if !h.next.Enabled(ctx, rec.Level) {
		return nil
	}
	return h.next.Handle(ctx, rec)
}

func (h *recentHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range attrs {
		c.attrs = append(c.attrs, slog.Attr{Key: h.group + a.Key, Value: a.Value})
	}
	return &c
}

func (h *recentHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.group = h.group + name + "."
	return &c
}
