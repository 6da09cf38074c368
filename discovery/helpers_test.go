package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// logSink is a slog.Handler that keeps every record for assertions.
type logSink struct {
	t     testing.TB
	name  string
	mu    sync.Mutex
	lines []logLine
}

type logLine struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler       { return s }
func (s *logSink) WithGroup(string) slog.Handler            { return s }
func (s *logSink) Handle(_ context.Context, rec slog.Record) error {
	l := logLine{level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	rec.Attrs(func(a slog.Attr) bool {
		l.attrs[a.Key] = a.Value.String()
		return true
	})
	s.mu.Lock()
	s.lines = append(s.lines, l)
	s.mu.Unlock()
	if testing.Verbose() && rec.Level > slog.LevelDebug {
		s.t.Logf("%s: %s %s %v", s.name, rec.Level, rec.Message, l.attrs)
	}
	return nil
}

// count returns how many lines above Debug contain substr in their message.
func (s *logSink) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lines {
		if l.level > slog.LevelDebug && strings.Contains(l.msg, substr) {
			n++
		}
	}
	return n
}

type testRouter struct {
	*Router
	logs *logSink
}

type routerOpt func(*Config, *tunables)

func withKey(k key.Private) routerOpt    { return func(c *Config, _ *tunables) { c.Private = k } }
func withSecret(s key.Secret) routerOpt  { return func(c *Config, _ *tunables) { c.Secret = s } }
func withHostIP(ip netip.Addr) routerOpt { return func(c *Config, _ *tunables) { c.HostIP = ip } }
func withTuning(f func(*tunables)) routerOpt {
	return func(_ *Config, tu *tunables) { f(tu) }
}

var testSecret = key.Secret{1, 2, 3, 4, 5}

func newKey(t testing.TB) key.Private {
	k, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newTestRouter starts a router on an ephemeral loopback port with short
// timings; it is closed at the end of the test.
func newTestRouter(t testing.TB, name string, opts ...routerOpt) *testRouter {
	t.Helper()
	sink := &logSink{t: t, name: name}
	cfg := Config{
		Private:    newKey(t),
		Secret:     testSecret,
		Nickname:   name,
		ListenAddr: "127.0.0.1:0",
		Logger:     slog.New(sink),
	}
	tu := defaultTunables()
	tu.tick = 20 * time.Millisecond
	tu.antiEntropy = 300 * time.Millisecond
	tu.backoffMin = 50 * time.Millisecond
	tu.backoffMax = 400 * time.Millisecond
	tu.redialFast = 50 * time.Millisecond
	tu.handshake = 2 * time.Second
	for _, o := range opts {
		o(&cfg, &tu)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.tun = tu
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &testRouter{Router: r, logs: sink}
}

func (r *testRouter) addr() string { return r.Addr().String() }

func (r *testRouter) peer(k key.Public) (Peer, bool) {
	for _, p := range r.Peers() {
		if p.Key == k {
			return p, true
		}
	}
	return Peer{}, false
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func connStates(r *testRouter) string {
	var b strings.Builder
	for _, c := range r.Connections() {
		fmt.Fprintf(&b, "%+v\n", c)
	}
	return b.String()
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

// bumpSelfLockedForTest gives our record a new version.
func (r *Router) bumpSelfLockedForTest() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bumpSelfLocked()
}
