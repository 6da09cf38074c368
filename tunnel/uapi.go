package tunnel

import (
	"bufio"
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/types/key"
)

// keepaliveInterval is the persistent_keepalive_interval, in seconds, of the
// peers we keep alive (reach.KeepaliveFor). Only one side of a pair
// should get one: wireguard-go starts a handshake the moment it is set, and
// when both sides did so at once, each overwrote its handshake state with
// the other's initiation, both responses were refused ("invalid response
// message") and the pair waited for the 5 s retry. The probes (probe.go)
// keep NAT mappings open in both directions, so one-sided keepalives lose
// nothing.
const keepaliveInterval = 25

// peerState is one peer as last applied to wireguard-go, normalized so that
// two configurations compare equal exactly when they mean the same.
type peerState struct {
	stale    bool           // read back after a failure: always rewritten
	endpoint netip.AddrPort // invalid: not set by us
	relay    string         // non-empty: the relay endpoint to use instead of endpoint
	allowed  []netip.Prefix // masked, sorted, no duplicates
	keep     reach.Keepalive
	noKeep   bool       // PeerConfig.Elsewhere: never a keepalive
	psk      key.Secret // zero: the tunnel's default
}

func (p peerState) equal(o peerState) bool {
	return !p.stale && !o.stale && p.endpoint == o.endpoint && p.relay == o.relay && p.keep == o.keep && p.noKeep == o.noKeep && p.psk == o.psk && slices.Equal(p.allowed, o.allowed)
}

// keepalive resolves p.keep for the pair (self, k).
func (p peerState) keepalive(self, k key.Public) bool {
	if p.noKeep {
		return false
	}
	return p.keep == reach.KeepaliveOn || (p.keep == reach.KeepaliveByKey && self.Less(k))
}

// normalizePeers turns the control plane's list into peerStates by key. A key
// listed twice gets the union of its AllowedIPs and the last valid endpoint.
func normalizePeers(peers []PeerConfig) map[key.Public]peerState {
	m := make(map[key.Public]peerState, len(peers))
	for _, p := range peers {
		if p.Key.IsZero() {
			continue // not a key; wireguard-go would reject the whole text
		}
		s := m[p.Key]
		s.noKeep = s.noKeep || p.Elsewhere
		if !p.PSK.IsZero() {
			s.psk = p.PSK
		}
		if p.Endpoint.IsValid() {
			s.endpoint = netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())
		}
		for _, pfx := range p.AllowedIPs {
			if !pfx.IsValid() {
				continue
			}
			pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits())
			if !pfx.IsValid() {
				continue
			}
			s.allowed = append(s.allowed, pfx.Masked())
		}
		m[p.Key] = s
	}
	for k, s := range m {
		slices.SortFunc(s.allowed, comparePrefix)
		s.allowed = slices.Compact(s.allowed)
		m[k] = s
	}
	return m
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// buildPeersUAPI returns the wireguard-go "set" text that changes the peers
// from applied to want, or "" when they are the same. A new or changed peer
// is written out whole (its AllowedIPs replaced), except its endpoint: that
// is written only when the control plane's choice changed, so that an
// endpoint wireguard-go learned by roaming is not reset on every update.
// Peers are written in key order, so the text is deterministic.
func buildPeersUAPI(self key.Public, applied, want map[key.Public]peerState, psk key.Secret) string {
	var b strings.Builder
	for _, k := range sortedKeys(applied) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.Hex())
		}
	}
	for _, k := range sortedKeys(want) {
		w := want[k]
		old, had := applied[k]
		if had && old.equal(w) {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\n", k.Hex())
		if !w.psk.IsZero() {
			fmt.Fprintf(&b, "preshared_key=%s\n", w.psk.Hex())
		} else {
			fmt.Fprintf(&b, "preshared_key=%s\n", psk.Hex())
		}
		switch {
		case w.relay != "":
			if !had || old.relay != w.relay {
				fmt.Fprintf(&b, "endpoint=%s\n", w.relay)
			}
		case w.endpoint.IsValid() && (!had || old.endpoint != w.endpoint || old.relay != ""):
			fmt.Fprintf(&b, "endpoint=%s\n", w.endpoint)
		}
		if w.keepalive(self, k) {
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", keepaliveInterval)
		} else if had && (old.stale || old.keepalive(self, k)) {
			b.WriteString("persistent_keepalive_interval=0\n")
		}
		b.WriteString("replace_allowed_ips=true\n")
		for _, p := range w.allowed {
			fmt.Fprintf(&b, "allowed_ip=%s\n", p)
		}
	}
	return b.String()
}

func sortedKeys(m map[key.Public]peerState) []key.Public {
	ks := make([]key.Public, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b key.Public) int { return cmp.Compare(string(a[:]), string(b[:])) })
	return ks
}

// deviceUAPI is the "set" text that configures the device itself.
func deviceUAPI(priv key.Private, port uint16) string {
	return fmt.Sprintf("private_key=%s\nlisten_port=%d\n", priv.Hex(), port)
}

// parsePeerStats reads wireguard-go's "get" text (device.IpcGet). Lines
// before the first public_key describe the device and are skipped, as are
// keys it does not know.
func parsePeerStats(text string) (map[key.Public]PeerStats, error) {
	out := make(map[key.Public]PeerStats)
	var (
		cur    key.Public
		inPeer bool
		st     PeerStats
		sec    int64
		nsec   int64
	)
	flush := func() {
		if !inPeer {
			return
		}
		if sec != 0 || nsec != 0 {
			st.LastHandshake = time.Unix(sec, nsec)
		}
		out[cur] = st
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("uapi: line %q has no '='", line)
		}
		var err error
		switch k {
		case "public_key":
			flush()
			cur, err = key.ParsePublicHex(v)
			inPeer, st, sec, nsec = true, PeerStats{}, 0, 0
		case "endpoint":
			if inPeer {
				if strings.HasPrefix(v, relayEndpointPrefix) {
					st.Relayed = true // the tunnel fills in Via
				} else {
					st.Endpoint, err = netip.ParseAddrPort(v)
				}
			}
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			st.RxBytes, err = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			st.TxBytes, err = strconv.ParseUint(v, 10, 64)
		case "errno":
			if v != "0" {
				return nil, fmt.Errorf("uapi: errno=%s", v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("uapi: %s: %w", k, err)
		}
	}
	flush()
	return out, nil
}
