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

// TestSummaryShowsEvictionsAndSecret: status names every evicted peer with
// its evictor, and the secret's epoch with the members still behind.
func TestSummaryShowsEvictionsAndSecret(t *testing.T) {
	at := time.Date(2026, 11, 30, 1, 2, 3, 0, time.UTC)
	st := api.Status{
		Peers: []api.Peer{{Self: true}},
		Evicted: []api.Evicted{
			{Peer: "aa:bb", Nickname: "h4", Evictor: "cc:dd", EvictorNickname: "h1", Time: at},
			{Peer: "ee:ff", Evictor: "cc:dd", Time: at},
		},
		Secret: &api.SecretRotation{Epoch: 2, ID: "0123456789abcdef", Active: []uint32{1, 2}, Behind: []string{"11:22(h5)"}},
	}
	var b bytes.Buffer
	showSummary(&b, st)
	out := b.String()
	for _, want := range []string{
		"Evicted: aa:bb(h4) by cc:dd(h1) at ",
		"ee:ff by cc:dd at ",
		"Secret: epoch 2 (id 0123456789abcdef), epoch 1 still in use; not yet held by 11:22(h5)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}
