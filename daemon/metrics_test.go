package daemon

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

// TestMetricsAddr serves /metrics over TCP on --metrics-addr and checks
// the text with promtool, the Prometheus project's own linter, when it is
// installed: names, types, HELP and the _total convention.
func TestMetricsAddr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := testConfig(t)
	cfg.MetricsAddr = addr
	cfg.Build = api.Build{Version: "v1.2.3", Commit: "abc", GoVersion: "go1.x"}
	r, tn := newFakeRouter(), newFakeTunnel()
	d := newTestDaemon(t, cfg, r, tn)
	direct, relayed := pubKey(1), pubKey(2)
	r.peers = []discovery.Peer{
		{Key: d.pub, Self: true, Reachable: true},
		{Key: direct, Nickname: "h1", Reachable: true},
		{Key: relayed, Nickname: "h2", Reachable: true},
		{Key: pubKey(3), Nickname: "h3"},
	}
	tn.stats = map[key.Public]tunnel.PeerStats{
		direct:  {Endpoint: netip.MustParseAddrPort("192.0.2.1:6783"), RxBytes: 1000, TxBytes: 2000, LastHandshake: time.Unix(1700000000, 0), RTT: 1500 * time.Microsecond},
		relayed: {Relayed: true, Via: direct, RxBytes: 5},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})

	var body []byte
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("GET /metrics = %d %s", resp.StatusCode, body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	if st := d.status(); st.Version != "v1.2.3" || st.Build.Commit != "abc" {
		t.Errorf("status version %q build %+v, want the stamp v1.2.3 abc", st.Version, st.Build)
	}
	text := string(body)
	for _, want := range []string{
		`weavewg_build_info{commit="abc",go_version="go1.x",version="v1.2.3"} 1`,
		`weavewg_peers{path="direct",state="reachable"} 1`,
		`weavewg_peers{path="relayed",state="reachable"} 1`,
		`weavewg_peers{path="none",state="unreachable"} 1`,
		`weavewg_peer_received_bytes_total{nickname="h1",peer="` + direct.Name() + `"} 1000`,
		`weavewg_peer_sent_bytes_total{nickname="h1",peer="` + direct.Name() + `"} 2000`,
		`weavewg_peer_last_handshake_timestamp_seconds{nickname="h1",peer="` + direct.Name() + `"} 1.7e+09`,
		`weavewg_peer_rtt_seconds{nickname="h1",peer="` + direct.Name() + `"} 0.0015`,
		`weavewg_peer_path_info{nickname="h2",path="relayed",peer="` + relayed.Name() + `"} 1`,
		`weavewg_ipam_owned_addresses `,
		`weavewg_ipam_free_addresses `,
		`weavewg_ipam_used_addresses 1`, // the host address
		`weavewg_dns_queries_total{result="nxdomain"} 0`,
		`weavewg_dns_names{reachable="true"} 0`,
		`weavewg_control_x_total 1`,
		`weavewg_udp_y_total 2`,
		`# TYPE weavewg_peer_received_bytes_total counter`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", text)
	}

	// Only /metrics is served on TCP: the API stays on its root-only socket.
	if resp, err := http.Get("http://" + addr + api.PathStatus); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET %s on the metrics address = %v %v, want 404", api.PathStatus, resp.StatusCode, err)
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool (Debian package prometheus) is not installed; `make deps` installs it: ", err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestCounterFamiliesAreWellFormed: family names follow the conventions,
// and the parts' drop counters land in a drop family with a reason.
func TestCounterFamiliesAreWellFormed(t *testing.T) {
	for name, f := range counterFamilies {
		if !strings.HasPrefix(f.metric, "weavewg_") || !strings.HasSuffix(f.metric, "_total") {
			t.Errorf("%s → %s: want weavewg_…_total", name, f.metric)
		}
		if (f.label == "") != (f.value == "") {
			t.Errorf("%s → %+v: a label needs a value", name, f)
		}
	}
	for _, name := range []string{"udp_junk_dropped", "udp_relay_dropped_no_route", "control_send_dropped", "gossip_channel_dropped", "nat_stun_queue_dropped"} {
		if f := counterFamilies[name]; f.label == "" {
			t.Errorf("drop counter %s has no family", name)
		}
	}
}
