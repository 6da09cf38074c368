package dns

import (
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// A server started without an address answers once Listen gives one, and
// moves when given another: the old address no longer answers.
func TestListenLaterAndMove(t *testing.T) {
	s := startServer(t, func(c *Config) { c.ListenAddr = "" })
	if s.Addr() != nil {
		t.Fatalf("listening at %v with no address", s.Addr())
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	first := s.Addr().String()
	if r := query(t, s, "udp", "nothing.weave.local.", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("rcode %d, want NXDOMAIN", r.Rcode)
	}
	if err := s.Listen("127.0.0.2:0"); err != nil {
		t.Fatal(err)
	}
	if r := query(t, s, "tcp", "nothing.weave.local.", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("rcode %d at the new address, want NXDOMAIN", r.Rcode)
	}
	m := new(mdns.Msg)
	m.SetQuestion("nothing.weave.local.", mdns.TypeA)
	c := &mdns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	if _, _, err := c.Exchange(m, first); err == nil {
		t.Fatalf("the old address %s still answers", first)
	}
}
