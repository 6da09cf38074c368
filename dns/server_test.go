package dns

import (
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/types/key"
)

func peerKey(b byte) key.Public {
	var k key.Public
	k[0] = b
	return k
}

var (
	selfKey  = peerKey(1)
	otherKey = peerKey(2)
)

// startServer runs a Server on 127.0.0.1:0 with the given config tweaks.
func startServer(t testing.TB, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{
		Self:           selfKey,
		ListenAddr:     "127.0.0.1:0",
		OverlayRange:   netip.MustParsePrefix("10.32.0.0/12"),
		Upstreams:      []string{"127.0.0.1:1"}, // nothing there unless a test says so
		ForwardTimeout: 300 * time.Millisecond,
		GossipInterval: -1,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func query(t testing.TB, s *Server, netw, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	return exchange(t, s, netw, m)
}

func exchange(t testing.TB, s *Server, netw string, m *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: netw, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, s.Addr().String())
	if err != nil {
		t.Fatalf("%s %s: %v", netw, m.Question[0].Name, err)
	}
	return r
}

func answerAddrs(m *mdns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			out = append(out, rr.A.String())
		case *mdns.AAAA:
			out = append(out, rr.AAAA.String())
		case *mdns.PTR:
			out = append(out, rr.Ptr)
		}
	}
	return out
}

// addRemote merges an entry owned by another peer, as gossip would.
func addRemote(s *Server, owner key.Public, name, addr string) {
	s.table.Merge([]Entry{{Owner: owner, Name: name, Addr: netip.MustParseAddr(addr), Origin: "c-" + addr, Version: 5}}, time.Unix(100, 0))
}

func TestAnswers(t *testing.T) {
	s := startServer(t, nil)
	must(t, s.AddEntry("web", netip.MustParseAddr("10.32.0.5"), "c1"))
	must(t, s.AddEntry("Web.weave.local.", netip.MustParseAddr("10.32.0.5"), "c1")) // same entry
	must(t, s.AddEntry("db", netip.MustParseAddr("10.32.0.9"), "c3"))
	must(t, s.AddEntry("v6only", netip.MustParseAddr("fd00::1"), "c4"))
	must(t, s.AddEntry("api.prod", netip.MustParseAddr("10.32.0.10"), "c5"))
	addRemote(s, otherKey, "web", "10.32.1.7")

	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string // sorted
		soa    bool     // SOA in the authority section
	}{
		{"A two peers", "web.weave.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.32.0.5", "10.32.1.7"}, false},
		{"A mixed case", "WeB.WEAVE.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.32.0.5", "10.32.1.7"}, false},
		{"A one", "db.weave.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.32.0.9"}, false},
		{"AAAA of v4 name is NODATA", "db.weave.local.", mdns.TypeAAAA, mdns.RcodeSuccess, nil, true},
		{"MX of name is NODATA", "db.weave.local.", mdns.TypeMX, mdns.RcodeSuccess, nil, true},
		{"AAAA", "v6only.weave.local.", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"fd00::1"}, false},
		{"A of v6 name is NODATA", "v6only.weave.local.", mdns.TypeA, mdns.RcodeSuccess, nil, true},
		{"dotted name", "api.prod.weave.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.32.0.10"}, false},
		{"empty non-terminal is NODATA", "prod.weave.local.", mdns.TypeA, mdns.RcodeSuccess, nil, true},
		{"unknown is NXDOMAIN", "nope.weave.local.", mdns.TypeA, mdns.RcodeNameError, nil, true},
		{"unknown AAAA is NXDOMAIN", "nope.weave.local.", mdns.TypeAAAA, mdns.RcodeNameError, nil, true},
		{"apex SOA", "weave.local.", mdns.TypeSOA, mdns.RcodeSuccess, nil, false},
		{"apex A is NODATA", "weave.local.", mdns.TypeA, mdns.RcodeSuccess, nil, true},
		{"PTR", "5.0.32.10.in-addr.arpa.", mdns.TypePTR, mdns.RcodeSuccess, []string{"web.weave.local."}, false},
		{"PTR remote", "7.1.32.10.in-addr.arpa.", mdns.TypePTR, mdns.RcodeSuccess, []string{"web.weave.local."}, false},
		{"PTR unknown in range", "99.0.32.10.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, nil, true},
		{"ANY refused", "web.weave.local.", mdns.TypeANY, mdns.RcodeRefused, nil, false},
		{"AXFR refused", "weave.local.", mdns.TypeAXFR, mdns.RcodeRefused, nil, false},
		{"IXFR refused", "weave.local.", mdns.TypeIXFR, mdns.RcodeRefused, nil, false},
	}
	for _, tt := range tests {
		for _, netw := range []string{"udp", "tcp"} {
			t.Run(tt.name+"/"+netw, func(t *testing.T) {
				r := query(t, s, netw, tt.qname, tt.qtype)
				if r.Rcode != tt.rcode {
					t.Fatalf("rcode %s, want %s", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tt.rcode])
				}
				got := answerAddrs(r)
				slices.Sort(got)
				if !slices.Equal(got, tt.answer) && !(tt.qtype == mdns.TypeSOA && len(r.Answer) == 1) {
					t.Errorf("answer %v, want %v", got, tt.answer)
				}
				hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == mdns.TypeSOA
				if hasSOA != tt.soa {
					t.Errorf("authority %v, want SOA: %v", r.Ns, tt.soa)
				}
				if tt.rcode != mdns.RcodeRefused && !r.Authoritative {
					t.Errorf("not authoritative")
				}
				for _, rr := range r.Answer {
					if rr.Header().Ttl != 1 {
						t.Errorf("TTL %d, want 1", rr.Header().Ttl)
					}
				}
			})
		}
	}
	c := s.Counters()
	if c["dns_answered_local"] == 0 || c["dns_nxdomain"] == 0 || c["dns_nodata"] == 0 || c["dns_refused"] == 0 {
		t.Errorf("counters %v", c)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestShuffle(t *testing.T) {
	s := startServer(t, nil)
	for i := range 5 {
		must(t, s.AddEntry("web", netip.AddrFrom4([4]byte{10, 32, 0, byte(10 + i)}), "c"))
	}
	orders := map[string]int{}
	firsts := map[string]int{}
	for range 50 {
		r := query(t, s, "udp", "web.weave.local.", mdns.TypeA)
		a := answerAddrs(r)
		if len(a) != 5 {
			t.Fatalf("answer %v", a)
		}
		orders[strings.Join(a, ",")]++
		firsts[a[0]]++
	}
	// 50 draws from 120 orders: seeing fewer than 10 distinct would mean
	// no shuffling (probability of a false failure is negligible).
	if len(orders) < 10 || len(firsts) < 3 {
		t.Errorf("%d distinct orders, %d distinct first addresses over 50 queries", len(orders), len(firsts))
	}
}

func TestTruncatedLocalAnswer(t *testing.T) {
	s := startServer(t, nil)
	for i := range 100 {
		must(t, s.AddEntry("big", netip.AddrFrom4([4]byte{10, 32, 1, byte(i)}), "c"))
	}
	m := new(mdns.Msg)
	m.SetQuestion("big.weave.local.", mdns.TypeA)
	c := &mdns.Client{Net: "udp", Timeout: time.Second}
	r, _, err := c.Exchange(m, s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Fatalf("UDP: TC=%v with %d answers", r.Truncated, len(r.Answer))
	}
	r = exchange(t, s, "tcp", m)
	if r.Truncated || len(r.Answer) != 100 {
		t.Fatalf("TCP: TC=%v with %d answers", r.Truncated, len(r.Answer))
	}
}

// fakeUpstream is a DNS server on 127.0.0.1 (UDP and TCP on one port) whose
// answers the test chooses.
func fakeUpstream(t *testing.T, h mdns.HandlerFunc) string {
	t.Helper()
	pc, ln, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String()
}

func isTCPWriter(w mdns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

func TestForward(t *testing.T) {
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		switch q.Name {
		case "example.org.":
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 77}, A: net.IPv4(192, 0, 2, 1)})
		case "big.example.org.":
			if !isTCPWriter(w) {
				m.Truncated = true // answer later, over TCP
				break
			}
			for i := range 60 {
				m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 5}, A: net.IPv4(192, 0, 2, byte(i))})
			}
		case "missing.example.org.":
			m.Rcode = mdns.RcodeNameError
		case "slow.example.org.":
			return // never answer
		}
		w.WriteMsg(m)
	})
	s := startServer(t, func(c *Config) { c.Upstreams = []string{up} })

	r := query(t, s, "udp", "example.org.", mdns.TypeA)
	if a := answerAddrs(r); r.Rcode != mdns.RcodeSuccess || len(a) != 1 || a[0] != "192.0.2.1" || r.Answer[0].Header().Ttl != 77 {
		t.Fatalf("forwarded: %v", r)
	}
	if r.Authoritative {
		t.Errorf("forwarded answer marked authoritative")
	}
	r = query(t, s, "udp", "missing.example.org.", mdns.TypeA)
	if r.Rcode != mdns.RcodeNameError {
		t.Fatalf("NXDOMAIN not passed through: %v", r)
	}
	// Truncated over UDP: the server retries over TCP and has 60 records;
	// they fit in neither 512 bytes nor, uncompressed... so a UDP client
	// gets a truncated answer and its TCP retry the whole.
	m := new(mdns.Msg)
	m.SetQuestion("big.example.org.", mdns.TypeA)
	m.SetEdns0(4096, false)
	r = exchange(t, s, "udp", m)
	if len(r.Answer) != 60 {
		t.Fatalf("big over UDP with EDNS 4096: TC=%v, %d answers", r.Truncated, len(r.Answer))
	}
	r = query(t, s, "udp", "big.example.org.", mdns.TypeA)
	if !r.Truncated {
		t.Fatalf("big over UDP without EDNS: TC=%v, %d answers", r.Truncated, len(r.Answer))
	}
	r = query(t, s, "tcp", "big.example.org.", mdns.TypeA)
	if len(r.Answer) != 60 {
		t.Fatalf("big over TCP: %d answers", len(r.Answer))
	}
	// An upstream that never answers: SERVFAIL within the timeout.
	start := time.Now()
	r = query(t, s, "udp", "slow.example.org.", mdns.TypeA)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("slow upstream: %v", r)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("SERVFAIL after %v", d)
	}
	c := s.Counters()
	if c["dns_forwarded"] < 4 || c["dns_forward_tcp_retries"] < 2 || c["dns_forward_failed"] != 1 {
		t.Errorf("counters %v", c)
	}
}

func TestForwardDeadUpstreamThenLive(t *testing.T) {
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: req.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 1}, A: net.IPv4(192, 0, 2, 2)})
		w.WriteMsg(m)
	})
	// A dead upstream first: the live one answers, within the timeout.
	s := startServer(t, func(c *Config) { c.Upstreams = []string{"127.0.0.2:9", up} })
	r := query(t, s, "udp", "example.net.", mdns.TypeA)
	if a := answerAddrs(r); len(a) != 1 || a[0] != "192.0.2.2" {
		t.Fatalf("after dead upstream: %v", r)
	}
	if c := s.Counters(); c["dns_forward_upstream_error"] != 1 || c["dns_forwarded"] != 1 {
		t.Errorf("counters %v", c)
	}
}

func TestUpstreamList(t *testing.T) {
	self, _ := net.ResolveUDPAddr("udp", "127.0.0.1:5353")
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	must(t, os.WriteFile(rc, []byte("# comment\nnameserver 127.0.0.1\nnameserver 192.0.2.53\noptions ndots:1\n"), 0o644))
	u := newUpstreams(nil, rc, time.Now, slog.New(slog.DiscardHandler))
	u.exclude(self)
	if got := u.list(); !slices.Equal(got, []string{"127.0.0.1:53", "192.0.2.53:53"}) {
		t.Errorf("resolv.conf upstreams %v", got)
	}
	u = newUpstreams([]string{"127.0.0.1:5353", "192.0.2.1", "[2001:db8::1]:54"}, "", time.Now, slog.New(slog.DiscardHandler))
	u.exclude(self)
	if got := u.list(); !slices.Equal(got, []string{"192.0.2.1:53", "[2001:db8::1]:54"}) {
		t.Errorf("self not excluded: %v", got)
	}
	any, _ := net.ResolveUDPAddr("udp", "0.0.0.0:53")
	u = newUpstreams([]string{"127.0.0.1", "127.0.0.53", "192.0.2.1"}, "", time.Now, slog.New(slog.DiscardHandler))
	u.exclude(any)
	if got := u.list(); !slices.Equal(got, []string{"192.0.2.1:53"}) {
		t.Errorf("listening on 0.0.0.0:53, loopback not excluded: %v", got)
	}
}

func TestMalformedThenGood(t *testing.T) {
	s := startServer(t, nil)
	must(t, s.AddEntry("web", netip.MustParseAddr("10.32.0.5"), "c1"))
	conn, err := net.Dial("udp", s.Addr().String())
	must(t, err)
	defer conn.Close()

	good := new(mdns.Msg)
	good.SetQuestion("web.weave.local.", mdns.TypeA)
	goodBytes, _ := good.Pack()
	twoQ := good.Copy()
	twoQ.Question = append(twoQ.Question, twoQ.Question[0])
	twoQBytes, _ := twoQ.Pack()
	update := good.Copy()
	update.Opcode = mdns.OpcodeUpdate
	updateBytes, _ := update.Pack()
	resp := good.Copy()
	resp.Response = true
	respBytes, _ := resp.Pack()
	huge := append(append([]byte{}, goodBytes...), make([]byte, 8000)...)
	cut := goodBytes[:len(goodBytes)-3]

	for _, bad := range [][]byte{
		{},                // empty
		{1, 2, 3},         // shorter than a header
		cut,               // question cut short
		twoQBytes,         // qdcount 2
		updateBytes,       // UPDATE
		respBytes,         // a response
		huge,              // oversized, trailing garbage
		make([]byte, 512), // zeros
	} {
		conn.Write(bad)
	}
	// TCP: a garbage length-prefixed message, and a connection that sends
	// half a message and hangs up.
	tc, err := net.Dial("tcp", s.Addr().String())
	must(t, err)
	tc.Write([]byte{0, 5, 1, 2, 3, 4, 5})
	tc.Close()
	tc, err = net.Dial("tcp", s.Addr().String())
	must(t, err)
	tc.Write([]byte{0, 200, 1, 2})
	tc.Close()

	for _, netw := range []string{"udp", "tcp"} {
		r := query(t, s, netw, "web.weave.local.", mdns.TypeA)
		if a := answerAddrs(r); len(a) != 1 {
			t.Fatalf("%s after bad input: %v", netw, r)
		}
	}
	c := s.Counters()
	if c["dns_malformed"] == 0 || c["dns_formerr"] == 0 || c["dns_notimp"] == 0 {
		t.Errorf("counters %v", c)
	}
}

func TestLookupAndWithdraw(t *testing.T) {
	s := startServer(t, nil)
	must(t, s.AddEntry("web", netip.MustParseAddr("10.32.0.5"), "c1"))
	addRemote(s, otherKey, "web", "10.32.1.7")
	addRemote(s, otherKey, "db", "10.32.1.8")
	got, err := s.Lookup("web.weave.local")
	must(t, err)
	if len(got) != 2 {
		t.Fatalf("lookup %v", got)
	}
	s.RemovePeer(otherKey)
	if r := query(t, s, "udp", "db.weave.local.", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("peer's name not withdrawn: %v", r)
	}
	if a := answerAddrs(query(t, s, "udp", "web.weave.local.", mdns.TypeA)); len(a) != 1 || a[0] != "10.32.0.5" {
		t.Fatalf("web after peer left: %v", a)
	}
	s.SetReachable([]key.Public{otherKey})
	if a := answerAddrs(query(t, s, "udp", "db.weave.local.", mdns.TypeA)); len(a) != 1 {
		t.Fatalf("peer's name not back: %v", a)
	}
	n, err := s.RemoveEntries("", netip.Addr{}, "c1") // detach
	if err != nil || n != 1 {
		t.Fatalf("remove: %d %v", n, err)
	}
	if a := answerAddrs(query(t, s, "udp", "web.weave.local.", mdns.TypeA)); len(a) != 1 || a[0] != "10.32.1.7" {
		t.Fatalf("web after detach: %v", a)
	}
	if es := s.Entries(); len(es) != 2 {
		t.Errorf("entries %v", es)
	}
}

// countingTransport records broadcasts.
type countingTransport struct{ msgs [][]byte }

func (c *countingTransport) Broadcast(m []byte) { c.msgs = append(c.msgs, m) }

// A peer that becomes reachable gets the whole table at once, not at the
// next anti-entropy round: after a restart it has none, and meanwhile its
// server would answer NXDOMAIN for every other peer's names.
func TestArrivingPeerGetsTheTable(t *testing.T) {
	tr := &countingTransport{}
	s := startServer(t, func(c *Config) { c.Transport = tr })
	must(t, s.AddEntry("web", netip.MustParseAddr("10.32.0.5"), "c1"))
	third := peerKey(3)
	tr.msgs = nil
	s.SetReachable([]key.Public{otherKey})
	if len(tr.msgs) == 0 {
		t.Fatal("no state broadcast when a peer became reachable")
	}
	typ, entries, err := ParseMessage(tr.msgs[0])
	if err != nil || typ != MsgState || len(entries) != 1 {
		t.Fatalf("broadcast %d %v %v", typ, entries, err)
	}
	tr.msgs = nil
	s.SetReachable([]key.Public{otherKey})
	s.SetReachable(nil)
	if len(tr.msgs) != 0 {
		t.Fatalf("%d broadcasts with no peer arriving", len(tr.msgs))
	}
	s.SetReachable([]key.Public{third})
	if len(tr.msgs) == 0 {
		t.Fatal("no state broadcast when another peer became reachable")
	}
}
