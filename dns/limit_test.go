package dns

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// tryQuery is query without failing the test on no answer.
func tryQuery(s *Server, netw, name string, timeout time.Duration) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetQuestion(name, mdns.TypeA)
	c := &mdns.Client{Net: netw, Timeout: timeout}
	r, _, err := c.Exchange(m, s.Addr().String())
	return r, err
}

func TestClientsOutsideAreNotAnswered(t *testing.T) {
	var asked atomic.Int32
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		asked.Add(1)
		m := new(mdns.Msg)
		m.SetReply(req)
		w.WriteMsg(m)
	})
	s := startServer(t, func(c *Config) {
		c.Upstreams = []string{up}
		c.Clients = []netip.Prefix{netip.MustParsePrefix("10.32.0.0/12")}
	})
	addRemote(s, otherKey, "web", "10.32.0.7")
	for _, netw := range []string{"udp", "tcp"} {
		for _, name := range []string{"web.weave.local.", "example.org."} {
			if r, err := tryQuery(s, netw, name, 300*time.Millisecond); err == nil {
				t.Errorf("%s %s from 127.0.0.1 (not a client) answered: %v", netw, name, r)
			}
		}
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("upstream asked %d times for a non-client", n)
	}
	if c := s.Counters(); c["dns_dropped_not_client"] != 4 || c["dns_forwarded"] != 0 {
		t.Errorf("counters %v", c)
	}
}

func TestForwardRatePerSource(t *testing.T) {
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: req.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 1}, A: net.IPv4(192, 0, 2, 3)})
		w.WriteMsg(m)
	})
	now := time.Unix(1000, 0) // frozen: the bucket never refills
	s := startServer(t, func(c *Config) {
		c.Upstreams = []string{up}
		c.ForwardRate, c.ForwardBurst = 1, 3
		c.Now = func() time.Time { return now }
	})
	addRemote(s, otherKey, "web", "10.32.0.7")
	answered := 0
	for range 6 {
		if _, err := tryQuery(s, "udp", "example.org.", 300*time.Millisecond); err == nil {
			answered++
		}
	}
	if answered != 3 {
		t.Errorf("%d of 6 forwards answered with a burst of 3", answered)
	}
	// The table's own names are not rate limited.
	for range 10 {
		r := query(t, s, "udp", "web.weave.local.", mdns.TypeA)
		if a := answerAddrs(r); len(a) != 1 {
			t.Fatalf("weave.local answer during the limit: %v", r)
		}
	}
	if c := s.Counters(); c["dns_forward_dropped_rate"] != 3 || c["dns_forwarded"] != 3 {
		t.Errorf("counters %v", c)
	}
}

func TestForwardsInFlightBounded(t *testing.T) {
	release := make(chan struct{})
	up := fakeUpstream(t, func(w mdns.ResponseWriter, req *mdns.Msg) {
		<-release // hold every forward until the test is done
	})
	t.Cleanup(func() { close(release) })
	s := startServer(t, func(c *Config) {
		c.Upstreams = []string{up}
		c.MaxForwards = 2
		c.ForwardTimeout = 2 * time.Second
	})
	for range 2 {
		go tryQuery(s, "udp", "slow.example.org.", 3*time.Second)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(s.fwdSem) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(s.fwdSem) != 2 {
		t.Fatalf("%d forwards in flight, want 2", len(s.fwdSem))
	}
	// Answered before the 2 s upstream timeout could have passed.
	r, err := tryQuery(s, "udp", "third.example.org.", time.Second)
	if err != nil || r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("third forward while two are in flight: %v %v, want SERVFAIL at once", r, err)
	}
	if c := s.Counters(); c["dns_forward_dropped_busy"] != 1 {
		t.Errorf("counters %v", c)
	}
}

// TestForgedEntriesIgnored is issue 14 acceptance 1 for names: a member
// sends entries owned by another peer (a name pointing at its own address,
// a tombstone of the other's name) and an entry of its own far in the
// future. Nothing changes and each is counted.
func TestForgedEntriesIgnored(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s, err := New(Config{Self: selfKey, GossipInterval: -1, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	victim, forger := peerKey(7), peerKey(8)
	web := Entry{Owner: victim, Name: "web", Addr: netip.MustParseAddr("10.40.0.1"), Origin: "c1", Version: uint64(now.UnixNano())}
	must(t, s.HandleMessage(victim, AppendMessages(MsgUpdate, []Entry{web})[0]))
	forged := []Entry{
		{Owner: victim, Name: "web", Addr: netip.MustParseAddr("10.32.9.9"), Origin: "x", Version: web.Version + 1},
		{Owner: victim, Name: "web", Addr: web.Addr, Origin: web.Origin, Version: web.Version + 1, Tombstone: true},
		{Owner: forger, Name: "db", Addr: netip.MustParseAddr("10.32.9.9"), Origin: "y", Version: uint64(now.Add(2 * time.Hour).UnixNano())},
	}
	must(t, s.HandleMessage(forger, AppendMessages(MsgUpdate, forged)[0]))
	if got, _ := s.Lookup("web"); len(got) != 1 || got[0] != web.Addr {
		t.Errorf("web after forgeries: %v", got)
	}
	if got, _ := s.Lookup("db"); len(got) != 0 {
		t.Errorf("far-future entry taken: %v", got)
	}
	if c := s.Counters(); c["dns_gossip_not_owner"] != 2 || c["dns_gossip_future"] != 1 {
		t.Errorf("counters %v", c)
	}
}
