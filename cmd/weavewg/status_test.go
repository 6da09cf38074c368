package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/api"
)

// TestConnectionsSayWhatIsKnown: a peer whose control connection is up but
// that has had no traffic yet shows exactly that, not a path and a
// handshake that never happened; after the handshake, the path and figures.
func TestConnectionsSayWhatIsKnown(t *testing.T) {
	hs := time.Now().Add(-3 * time.Second)
	st := api.Status{Conns: []api.Connection{
		{Address: "192.0.2.2:6783", Outbound: true, State: api.StateEstablished, Peer: "aa:bb", Nickname: "h2",
			Direct: true, Endpoint: "192.0.2.2:6783"},
		{Address: "192.0.2.3:6783", Outbound: true, State: api.StateEstablished, Peer: "cc:dd", Nickname: "h3",
			Endpoint: "relayed", Via: "h2"},
		{Address: "192.0.2.4:6783", Outbound: true, State: api.StateEstablished, Peer: "ee:ff", Nickname: "h4",
			Direct: true, Endpoint: "192.0.2.4:6783", LastHandshake: &hs, RxBytes: 2048, TxBytes: 100},
	}}
	var b bytes.Buffer
	showConnections(&b, st)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got:\n%s", b.String())
	}
	for i, want := range []string{
		"WireGuard session not yet (no traffic so far; first packet goes via endpoint 192.0.2.2:6783)",
		"WireGuard session not yet (no traffic so far; first packet goes via relay h2)",
		"direct",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q lacks %q", i, lines[i], want)
		}
	}
	for _, l := range lines[:2] {
		if strings.Contains(l, "never") || strings.Contains(l, " direct ") {
			t.Errorf("a peer without a session is shown as direct or with a handshake: %q", l)
		}
	}
	if !strings.Contains(lines[2], "handshake 3s ago") || !strings.Contains(lines[2], "rx 2.0KiB") {
		t.Errorf("established session lacks its figures: %q", lines[2])
	}
}
