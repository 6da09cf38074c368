package dns

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// TestSingleLabelFromTable: a bare name that is in the table ("db.", as a
// resolver asks after db.weave.local has no record of the type) is
// answered from the table under the name asked, never forwarded; a bare
// name that is not in the table still goes upstream.
func TestSingleLabelFromTable(t *testing.T) {
	var asked atomic.Int64
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		asked.Add(1)
		m := new(mdns.Msg)
		m.SetReply(req)
		m.Rcode = mdns.RcodeNameError
		w.WriteMsg(m)
	})
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up} })
	must(t, s.AddEntry("db", netip.MustParseAddr("10.32.0.9"), "c1"))
	addRemote(s, otherKey, "db", "10.32.1.7")
	must(t, s.AddEntry("api.prod", netip.MustParseAddr("10.32.0.10"), "c2"))

	for _, netw := range []string{"udp", "tcp"} {
		r := query(t, s, netw, "DB.", mdns.TypeA)
		got := answerAddrs(r)
		slices.Sort(got)
		if r.Rcode != mdns.RcodeSuccess || !slices.Equal(got, []string{"10.32.0.9", "10.32.1.7"}) {
			t.Fatalf("%s A DB.: %v", netw, r)
		}
		for _, rr := range r.Answer {
			if rr.Header().Name != "DB." {
				t.Errorf("%s: answer owner %q, want the name asked, DB.", netw, rr.Header().Name)
			}
		}
		r = query(t, s, netw, "db.", mdns.TypeAAAA)
		if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
			t.Fatalf("%s AAAA db.: want NODATA with the SOA, got %v", netw, r)
		}
	}
	// The table's own records are untouched by the renaming.
	if r := query(t, s, "udp", "db.weave.local.", mdns.TypeA); r.Answer[0].Header().Name != "db.weave.local." {
		t.Errorf("db.weave.local answered as %q after a bare query", r.Answer[0].Header().Name)
	}
	if asked.Load() != 0 {
		t.Fatalf("upstream asked %d times for names in the table", asked.Load())
	}
	// Not in the table: forwarded, as are multi-label names outside the zone.
	for _, name := range []string{"nope.", "prod.", "api.prod."} {
		if r := query(t, s, "udp", name, mdns.TypeA); r.Rcode != mdns.RcodeNameError {
			t.Errorf("%s: %v, want the upstream's NXDOMAIN", name, r)
		}
	}
	if asked.Load() != 3 {
		t.Errorf("upstream asked %d times, want 3 (nope., prod., api.prod.)", asked.Load())
	}
}

// blackhole is an upstream that reads queries and never answers.
func blackhole(t *testing.T, got *atomic.Int64) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	return pc.LocalAddr().String()
}

// syncBuffer is a log sink the server's goroutines may write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) lines(substr string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, l := range strings.Split(b.b.String(), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// TestDeadUpstreams: with every upstream silent, every one of them is
// asked, the client gets SERVFAIL, and each upstream's address is logged
// once, then not again until a minute has passed.
func TestDeadUpstreams(t *testing.T) {
	var n [3]atomic.Int64
	ups := []string{blackhole(t, &n[0]), blackhole(t, &n[1]), blackhole(t, &n[2])}
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	logs := &syncBuffer{}
	const timeout = 600 * time.Millisecond
	s := startServer(t, func(c *Config) {
		c.Upstreams = ups
		c.ForwardTimeout = timeout
		c.Now = clock
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})

	start := time.Now()
	r := query(t, s, "udp", "example.org.", mdns.TypeA)
	took := time.Since(start)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("all upstreams silent: %v, want SERVFAIL", r)
	}
	for i := range n {
		if n[i].Load() != 1 {
			t.Errorf("upstream %d asked %d times, want 1", i, n[i].Load())
		}
	}
	// The upstreams share the timeout (each waiting its own in turn would
	// take three); no threshold here, timings are noisy on shared machines.
	t.Logf("SERVFAIL after %v with three silent upstreams and a %v timeout", took, timeout)
	for _, up := range ups {
		if l := logs.lines("upstream=" + up); len(l) != 1 {
			t.Errorf("log lines naming %s: %q, want 1", up, l)
		}
	}

	query(t, s, "udp", "example.org.", mdns.TypeA)
	if l := logs.lines("upstream DNS server not answering"); len(l) != 3 {
		t.Errorf("a second failure within the minute logged again: %q", l)
	}
	mu.Lock()
	now = now.Add(upstreamLogEvery)
	mu.Unlock()
	query(t, s, "udp", "example.org.", mdns.TypeA)
	if l := logs.lines("failed_attempts=2"); len(l) != 3 {
		t.Errorf("after a minute: %q, want one line per upstream counting 2 failures", l)
	}
}
