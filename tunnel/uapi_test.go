package tunnel

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func testKey(b byte) key.Public {
	var k key.Public
	k[0] = b
	return k
}

func TestBuildPeersUAPI(t *testing.T) {
	var psk key.Secret
	psk[31] = 0xff
	pskLine := "preshared_key=" + psk.Hex() + "\n"
	k1, k2 := testKey(1), testKey(2)
	ep1 := netip.MustParseAddrPort("192.0.2.1:6783")
	ep1b := netip.MustParseAddrPort("192.0.2.11:6783")
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	peer1 := PeerConfig{Key: k1, Endpoint: ep1, AllowedIPs: pfx("10.32.0.2/32", "10.32.2.0/24")}
	full1 := "public_key=" + k1.Hex() + "\n" + pskLine +
		"endpoint=192.0.2.1:6783\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\n" +
		"allowed_ip=10.32.0.2/32\nallowed_ip=10.32.2.0/24\n"

	tests := []struct {
		name          string
		applied, want []PeerConfig
		out           string
	}{
		{"nothing", nil, nil, ""},
		{"zero key is skipped", nil, []PeerConfig{{Key: key.Public{}, AllowedIPs: pfx("10.32.0.9/32")}}, ""},
		{"add one", nil, []PeerConfig{peer1}, full1},
		{"unchanged", []PeerConfig{peer1}, []PeerConfig{peer1}, ""},
		{"unchanged, reordered and unmasked prefixes",
			[]PeerConfig{peer1},
			[]PeerConfig{{Key: k1, Endpoint: ep1, AllowedIPs: pfx("10.32.2.7/24", "10.32.0.2/32", "10.32.0.2/32")}}, ""},
		{"remove one", []PeerConfig{peer1}, nil, "public_key=" + k1.Hex() + "\nremove=true\n"},
		{"allowed IPs change keeps the learned endpoint",
			[]PeerConfig{peer1},
			[]PeerConfig{{Key: k1, Endpoint: ep1, AllowedIPs: pfx("10.32.0.2/32")}},
			"public_key=" + k1.Hex() + "\n" + pskLine +
				"persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.32.0.2/32\n"},
		{"endpoint change",
			[]PeerConfig{peer1},
			[]PeerConfig{{Key: k1, Endpoint: ep1b, AllowedIPs: peer1.AllowedIPs}},
			strings.Replace(full1, "192.0.2.1:", "192.0.2.11:", 1)},
		{"no endpoint",
			nil,
			[]PeerConfig{{Key: k2, AllowedIPs: pfx("10.32.0.3/32")}},
			"public_key=" + k2.Hex() + "\n" + pskLine +
				"persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.32.0.3/32\n"},
		{"v4-mapped endpoint is unmapped",
			nil,
			[]PeerConfig{{Key: k1, Endpoint: netip.MustParseAddrPort("[::ffff:192.0.2.1]:6783"), AllowedIPs: peer1.AllowedIPs}},
			full1},
		{"remove comes first, then adds in key order",
			[]PeerConfig{peer1},
			[]PeerConfig{{Key: k2}},
			"public_key=" + k1.Hex() + "\nremove=true\n" +
				"public_key=" + k2.Hex() + "\n" + pskLine + "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := buildPeersUAPI(key.Public{}, normalizePeers(tt.applied), normalizePeers(tt.want), psk)
			if got != tt.out {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.out)
			}
		})
	}
}

// A peer read back after a failed IpcSet is stale: always rewritten whole.
func TestBuildPeersUAPIStale(t *testing.T) {
	k := testKey(1)
	applied := map[key.Public]peerState{k: {stale: true}}
	want := map[key.Public]peerState{k: {}}
	if got := buildPeersUAPI(key.Public{}, applied, want, key.Secret{}); !strings.HasPrefix(got, "public_key="+k.Hex()+"\n") {
		t.Errorf("stale peer not rewritten: %q", got)
	}
}

func TestParsePeerStats(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	// As device.IpcGet prints it: device lines first, then each peer.
	text := "private_key=" + strings.Repeat("ab", 32) + "\n" +
		"listen_port=6783\n" +
		"public_key=" + k1.Hex() + "\n" +
		"preshared_key=" + strings.Repeat("00", 32) + "\n" +
		"protocol_version=1\n" +
		"endpoint=192.0.2.2:6783\n" +
		"last_handshake_time_sec=1700000000\n" +
		"last_handshake_time_nsec=500\n" +
		"tx_bytes=1234\n" +
		"rx_bytes=5678\n" +
		"persistent_keepalive_interval=25\n" +
		"allowed_ip=10.32.0.2/32\n" +
		"public_key=" + k2.Hex() + "\n" +
		"preshared_key=" + strings.Repeat("00", 32) + "\n" +
		"protocol_version=1\n" +
		"last_handshake_time_sec=0\n" +
		"last_handshake_time_nsec=0\n" +
		"tx_bytes=0\n" +
		"rx_bytes=0\n" +
		"persistent_keepalive_interval=25\n"
	got, err := parsePeerStats(text)
	if err != nil {
		t.Fatal(err)
	}
	want := map[key.Public]PeerStats{
		k1: {Endpoint: netip.MustParseAddrPort("192.0.2.2:6783"), LastHandshake: time.Unix(1700000000, 500), TxBytes: 1234, RxBytes: 5678},
		k2: {},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d peers, want %d: %+v", len(got), len(want), got)
	}
	for k, w := range want {
		g := got[k]
		if g.Endpoint != w.Endpoint || !g.LastHandshake.Equal(w.LastHandshake) || g.TxBytes != w.TxBytes || g.RxBytes != w.RxBytes {
			t.Errorf("peer %x: got %+v, want %+v", k[0], g, w)
		}
	}
	if !got[k2].LastHandshake.IsZero() {
		t.Errorf("peer without handshake: LastHandshake = %v, want zero", got[k2].LastHandshake)
	}
}

func TestParsePeerStatsErrors(t *testing.T) {
	for _, tt := range []struct{ name, text string }{
		{"no equals", "public_key\n"},
		{"bad key", "public_key=zz\n"},
		{"bad endpoint", "public_key=" + testKey(1).Hex() + "\nendpoint=nowhere\n"},
		{"bad counter", "public_key=" + testKey(1).Hex() + "\nrx_bytes=-1\n"},
		{"errno", "errno=1\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parsePeerStats(tt.text); err == nil {
				t.Errorf("parsePeerStats(%q) succeeded", tt.text)
			}
		})
	}
}

func FuzzParsePeerStats(f *testing.F) {
	f.Add("public_key=" + testKey(1).Hex() + "\nendpoint=192.0.2.2:1\nrx_bytes=1\n")
	f.Add("listen_port=1\n")
	f.Fuzz(func(t *testing.T, s string) {
		parsePeerStats(s) // must not panic
	})
}

func TestWGLogFilter(t *testing.T) {
	for _, f := range []string{"Routine: TUN reader - started", "%v - Routine: sequential sender - stopped", "%v - Sending keepalive packet"} {
		if !droppedWGFormat(f) {
			t.Errorf("%q not dropped", f)
		}
	}
	if droppedWGFormat("%v - Received handshake response") {
		t.Error("handshake line dropped")
	}
	rl := &rateLimiter{last: map[string]rateState{}}
	now := time.Unix(0, 0)
	if ok, _ := rl.allow("x", now); !ok {
		t.Error("first line not allowed")
	}
	rl.allow("x", now.Add(time.Second))
	rl.allow("x", now.Add(2*time.Second))
	if ok, n := rl.allow("x", now.Add(errorEvery+time.Second)); !ok || n != 2 {
		t.Errorf("after the interval: allow = %v, %d suppressed; want true, 2", ok, n)
	}
}

// TestKeepaliveOnOneSideOnly: of two peers, only the one with the smaller key
// keeps the other alive, so they never both start a handshake at once.
func TestKeepaliveOnOneSideOnly(t *testing.T) {
	var small, large key.Public
	small[0], large[0] = 1, 2
	want := func(k key.Public) map[key.Public]peerState {
		return normalizePeers([]PeerConfig{{Key: k, Endpoint: netip.MustParseAddrPort("192.0.2.1:6783")}})
	}
	if got := buildPeersUAPI(small, nil, want(large), key.Secret{}); !strings.Contains(got, "persistent_keepalive_interval=25") {
		t.Errorf("the smaller key does not keep the larger alive:\n%s", got)
	}
	if got := buildPeersUAPI(large, nil, want(small), key.Secret{}); strings.Contains(got, "persistent_keepalive") {
		t.Errorf("the larger key keeps the smaller alive too:\n%s", got)
	}
}

// TestElsewhereNoKeepalive: a peer whose WireGuard packets another device
// (kernel WireGuard) carries gets no keepalive from wireguard-go, even on
// the side that would keep it alive, and loses the one it had.
func TestElsewhereNoKeepalive(t *testing.T) {
	var small, large key.Public
	small[0], large[0] = 1, 2
	ep := netip.MustParseAddrPort("192.0.2.1:6783")
	here := normalizePeers([]PeerConfig{{Key: large, Endpoint: ep}})
	there := normalizePeers([]PeerConfig{{Key: large, Endpoint: ep, Elsewhere: true}})
	if got := buildPeersUAPI(small, nil, there, key.Secret{}); strings.Contains(got, "persistent_keepalive_interval=25") {
		t.Errorf("a peer carried elsewhere is kept alive:\n%s", got)
	}
	if got := buildPeersUAPI(small, here, there, key.Secret{}); !strings.Contains(got, "persistent_keepalive_interval=0") {
		t.Errorf("moving a peer elsewhere leaves its keepalive on:\n%s", got)
	}
}

// TestPairPresharedKey: a peer's own preshared key (a rotated secret)
// replaces the default, and a change of it alone rewrites the peer without
// removing it (wireguard-go keeps its session until the next handshake).
func TestPairPresharedKey(t *testing.T) {
	var k key.Public
	k[0] = 3
	def, rotated := key.Secret{1}, key.Secret{2}
	ep := netip.MustParseAddrPort("192.0.2.1:6783")
	old := normalizePeers([]PeerConfig{{Key: k, Endpoint: ep}})
	got := buildPeersUAPI(key.Public{}, nil, old, def)
	if !strings.Contains(got, "preshared_key="+def.Hex()+"\n") {
		t.Fatalf("no default key:\n%s", got)
	}
	want := normalizePeers([]PeerConfig{{Key: k, Endpoint: ep, PSK: rotated}})
	got = buildPeersUAPI(key.Public{}, old, want, def)
	if !strings.Contains(got, "preshared_key="+rotated.Hex()+"\n") || strings.Contains(got, "remove=true") || strings.Contains(got, "endpoint=") {
		t.Fatalf("rotating the key wrote:\n%s", got)
	}
	if got := buildPeersUAPI(key.Public{}, want, want, def); got != "" {
		t.Errorf("nothing changed, yet:\n%s", got)
	}
}
