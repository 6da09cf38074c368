package integration

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// TestExposeHide is issue 15 acceptance 2: a TCP listener on h1 bound to
// 0.0.0.0 is unreachable from any container (h1's own and h2's, through
// h1's overlay address, and through h1's underlay address by a route
// added by hand in the container) until `weavewg expose`, reachable after
// (also after a restart of h1), unreachable after `weavewg hide`; h1
// answers no container's ping while hidden (as a Weave Net host, which had
// no overlay address), and does once exposed; DNS keeps answering
// throughout, and h1's own connections and pings to containers work while
// it is hidden. The host address comes from IPAM: inside the
// range, and no container's.
func TestExposeHide(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	h1, h2 := b.AddHost(testbed.HostOptions{}), b.AddHost(testbed.HostOptions{})
	b.WaitMesh(30*time.Second, h1, h2)
	c1 := named(t, h1, "local")
	c2 := named(t, h2, "remote")
	if err := c1.PingEventually(c2.Addr, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	hostIP := strings.Split(h1.HostIP, "/")[0]
	for _, c := range []*testbed.Container{c1, c2} {
		if c.Addr == hostIP || strings.Split(h2.HostIP, "/")[0] == hostIP {
			t.Fatalf("h1's host address %s is also %s's", hostIP, c)
		}
	}
	if st := h1.Status(); st.HostIPFrom != "ipam" {
		t.Errorf("h1's host address comes from %q, want ipam", st.HostIPFrom)
	}

	ln, err := testbed.ServeReplies(h1.Netns, "0.0.0.0:8080", func(net.Conn) string { return "hello\n" })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// c1 routes h1's underlay address into the bridge by hand: proxy ARP
	// answers for it, so only the host's filter stands in the way.
	if out, err := c1.Exec("ip", "route", "add", h1.UnderlayIP+"/32", "dev", "ethwe0"); err != nil {
		t.Fatalf("route by hand: %v %s", err, out)
	}
	reach := func(c *testbed.Container, addr string) error {
		b, err := testbed.ReadReply(c.Netns, net.JoinHostPort(addr, "8080"), 2*time.Second)
		if err != nil {
			return err
		}
		if b != "hello\n" {
			return errors.New("no greeting: " + b)
		}
		return nil
	}
	dnsWorks := func(phase string) {
		t.Helper()
		for _, c := range []*testbed.Container{c1, c2} {
			addrs, r, err := lookupA(c, hostIP+":53", "local.weave.local")
			if err != nil || r.Rcode != mdns.RcodeSuccess || len(addrs) != 1 || addrs[0] != c1.Addr {
				t.Errorf("%s: %s asked h1's DNS for local.weave.local: %v %v %v", phase, c, addrs, r, err)
			}
		}
	}
	hidden := func(phase string) {
		t.Helper()
		for _, c := range []*testbed.Container{c1, c2} {
			if err := reach(c, hostIP); err == nil {
				t.Errorf("%s: %s reached h1's listener at %s", phase, c, hostIP)
			}
		}
		if err := reach(c1, h1.UnderlayIP); err == nil {
			t.Errorf("%s: %s reached h1's listener at its underlay address %s", phase, c1, h1.UnderlayIP)
		}
		for _, c := range []*testbed.Container{c1, c2} {
			if err := c.Ping(hostIP); err == nil {
				t.Errorf("%s: hidden h1 answered %s's ping at %s", phase, c, hostIP)
			}
		}
		dnsWorks(phase)
	}
	exposed := func(phase string) {
		t.Helper()
		for _, c := range []*testbed.Container{c1, c2} {
			if err := reach(c, hostIP); err != nil {
				t.Errorf("%s: %s cannot reach h1's listener at %s: %v", phase, c, hostIP, err)
			}
			if err := c.PingEventually(hostIP, 5*time.Second); err != nil {
				t.Errorf("%s: exposed h1 does not answer %s's ping: %v", phase, c, err)
			}
		}
		dnsWorks(phase)
	}

	hidden("before expose")
	// Hidden, h1 still opens connections to containers itself.
	cl, err := testbed.Listen(c2.Netns, "0.0.0.0:8081")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	go func() {
		if conn, err := cl.Accept(); err == nil {
			conn.Close()
		}
	}()
	if conn, err := testbed.Dial(h1.Netns, net.JoinHostPort(c2.Addr, "8081"), 5*time.Second); err != nil {
		t.Errorf("hidden h1 cannot connect to a container itself: %v", err)
	} else {
		conn.Close()
	}
	if out, err := h1.Exec("ping", "-c", "1", "-W", "2", "-n", "-q", c2.Addr); err != nil {
		t.Errorf("hidden h1 cannot ping a container itself: %v %s", err, out)
	}

	var res api.ExposeResult
	if err := json.Unmarshal([]byte(h1.CLI("expose", "--json")), &res); err != nil {
		t.Fatal(err)
	}
	if res.Address != hostIP || !res.Changed || len(res.Exposed) != 1 {
		t.Fatalf("expose answered %+v, want h1's address %s", res, hostIP)
	}
	t.Logf("weavewg expose: %s", strings.TrimSpace(h1.CLI("expose")))
	exposed("after expose")
	if st := h1.Status(); len(st.Exposed) != 1 || st.Exposed[0].Address != hostIP {
		t.Errorf("status after expose: %+v", st.Exposed)
	}

	// An exposure survives a restart (host.json), and so does the address.
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	h1.Launch()
	b.WaitMesh(30*time.Second, h1, h2)
	if got := strings.Split(h1.HostIP, "/")[0]; got != hostIP {
		t.Fatalf("h1's host address changed over a restart: %s, was %s", got, hostIP)
	}
	testbed.Eventually(t, 20*time.Second, "c2 reaches exposed h1 after its restart", func() error { return reach(c2, hostIP) })
	exposed("after a restart")

	out := h1.CLI("hide")
	if !strings.Contains(out, "hidden") {
		t.Errorf("weavewg hide said %q", out)
	}
	hidden("after hide")
	if st := h1.Status(); len(st.Exposed) != 0 {
		t.Errorf("status after hide: %+v", st.Exposed)
	}
	if out, err := h1.CLIErr("expose", "10.99.0.0/24"); err == nil || !strings.Contains(out, "not inside the overlay range") {
		t.Errorf("expose outside the range: %v %s", err, out)
	}
}

// reachHostEventually waits until the host at hostIP answers a DNS query
// from namespace ns: what a container reaches of a host that is not
// exposed (it answers no ping), so the sign its link to the host works.
func reachHostEventually(ns, hostIP string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := testbed.DNSQuery(ns, hostIP+":53", "weave.local", mdns.TypeA, time.Second)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
