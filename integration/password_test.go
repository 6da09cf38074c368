package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// refusalLine matches a log line, at info level or above, that says a
// control handshake failed for want of the network secret.
var refusalLine = regexp.MustCompile(`(?i)level=(INFO|WARN|ERROR).*(secret|password)`)

func refusals(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if refusalLine.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// TestWrongPasswordRefused is acceptance 3 of issue 2: a host launched with
// another password gets no control connection and no WireGuard peer, its
// containers reach nothing, and both sides log why, once (not once per retry).
func TestWrongPasswordRefused(t *testing.T) {
	needTool(t, "ping")
	b := newBed(t, testbed.Options{})
	h1 := b.AddHost(testbed.HostOptions{})
	h2 := b.AddHost(testbed.HostOptions{})
	// The outsider creates its own network (so it has addresses to give its
	// container) and then dials h1 and h2.
	bad := b.AddHost(testbed.HostOptions{Password: "not-" + b.Password(), NoPeers: true})
	// Its container is attached first, so its network is used and never
	// gives way, and at an address the good network does not use, so that
	// "reaches nothing" is not confused with reaching a same-numbered
	// address on the good side.
	cs := b.AddContainers(1, h1, h2)
	cs = append(cs, bad.AddContainerWithIP("10.47.255.1/12"))
	bad.CLI("connect", h1.UnderlayIP)
	bad.CLI("connect", h2.UnderlayIP)
	b.WaitMesh(30*time.Second, h1, h2)
	if err := cs[0].PingEventually(cs[1].Addr, 20*time.Second); err != nil {
		t.Fatalf("the good pair does not work, so the rest means nothing: %v", err)
	}

	// Let the outsider retry for a while: the refusal must be logged once,
	// not once per attempt. This is an observation window, not a wait for
	// something to happen.
	time.Sleep(10 * time.Second)

	for _, h := range []*testbed.Host{h1, h2} {
		st := h.Status()
		if p := testbed.PeerByNick(st, bad.Name); p != nil {
			t.Errorf("%s knows the outsider as a peer: %+v", h, *p)
		}
		for _, c := range st.Conns {
			if c.State == api.StateEstablished && (c.Nickname == bad.Name || strings.HasPrefix(c.Address, bad.UnderlayIP+":")) {
				t.Errorf("%s has an established connection with the outsider: %+v", h, c)
			}
		}
		if n := counterSum(st.Counters, "control_handshake_bad_secret"); n == 0 {
			t.Errorf("%s: control_handshake_bad_secret is 0; counters %v", h, st.Counters)
		}
	}
	st := bad.Status()
	for _, p := range st.Peers {
		if !p.Self {
			t.Errorf("outsider knows peer %s (%s)", p.Nickname, p.Name)
		}
	}
	for _, c := range st.Conns {
		if c.State == api.StateEstablished || c.LastHandshake != nil {
			t.Errorf("outsider has a working connection: %+v", c)
		}
		t.Logf("outsider's connection: %s %s: %s", c.Address, c.State, c.Error)
	}
	if n := counterSum(st.Counters, "control_handshake_refused"); n == 0 {
		t.Errorf("outsider: control_handshake_refused is 0; counters %v", st.Counters)
	}

	// No data path in either direction.
	for _, c := range cs[:2] {
		if err := cs[2].Ping(c.Addr); err == nil {
			t.Errorf("outsider's container %s reached %s", cs[2], c)
		}
		if err := c.Ping(cs[2].Addr); err == nil {
			t.Errorf("%s reached the outsider's container %s", c, cs[2])
		}
	}

	// Logged on both sides, at least once and not per retry: at most two
	// lines per host the refusal involves.
	for _, h := range []*testbed.Host{h1, h2, bad} {
		lines := refusals(h.Log())
		limit := 2
		if h == bad {
			limit = 2 * 2 // it dials two hosts
		}
		desc := fmt.Sprintf("%s: %d refusal log lines", h, len(lines))
		switch {
		case len(lines) == 0:
			t.Errorf("%s (none; want the reason logged at info or above)", desc)
		case len(lines) > limit:
			t.Errorf("%s, want ≤ %d (logged per retry?):\n%s", desc, limit, strings.Join(lines, "\n"))
		default:
			t.Logf("%s:\n%s", desc, strings.Join(lines, "\n"))
		}
	}
}
