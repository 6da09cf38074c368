package daemon

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/atomicfile"
	"github.com/weavewg/weavewg/types/key"
)

// The network this host belongs to is kept in the state dir:
//
//	network.json  secret (0600), overlay range, members to reconnect to
//	tokens.json   the token registry as gossiped
//
// The secret is written only here and travels only inside the join
// handshake; it is never logged, shown by status, or put in a token.
const (
	networkFile = "network.json"
	tokensFile  = "tokens.json"
)

type networkState struct {
	Secret string `json:"secret"` // base64
	Range  string `json:"range"`
	// DefaultSubnet is --ipalloc-default-subnet of the host that created
	// the network, told to joiners ("" when it is the whole range).
	DefaultSubnet string   `json:"default_subnet,omitempty"`
	Founder       bool     `json:"founder,omitempty"` // this host created the network
	Peers         []string `json:"peers,omitempty"`   // HOST:PORT to dial at start
	// Password marks a secret derived from --password (Weave-style setups).
	Password bool `json:"password,omitempty"`
}

func (n networkState) secret() (key.Secret, error) {
	var s key.Secret
	b, err := base64.StdEncoding.DecodeString(n.Secret)
	if err != nil || len(b) != key.Len {
		return s, errors.New("network.json: secret is corrupt")
	}
	copy(s[:], b)
	return s, nil
}

func loadNetwork(dir string) (*networkState, error) {
	b, err := os.ReadFile(filepath.Join(dir, networkFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var n networkState
	if err := json.Unmarshal(b, &n); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", networkFile, err)
	}
	if _, err := n.secret(); err != nil {
		return nil, err
	}
	return &n, nil
}

func saveNetwork(dir string, n *networkState) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, networkFile), append(b, '\n'), 0o600)
}

// resolveNetwork decides which network this start belongs to, from the
// state dir, --password and a fresh admission, and records it. It reports
// whether the network was created now (so a join line is printed).
func (d *Daemon) resolveNetwork() (created bool, err error) {
	cfg := &d.cfg
	n, err := loadNetwork(cfg.StateDir)
	if err != nil {
		return false, err
	}
	d.newNetwork = n == nil || cfg.Admission != nil
	switch {
	case cfg.Admission != nil:
		a := cfg.Admission
		if n != nil {
			if s, _ := n.secret(); s != a.Secret {
				return false, fmt.Errorf("this host is already in network %s; run 'weavewg reset' to leave it first", discovery.IDOf(s))
			}
		}
		n = &networkState{
			Secret: base64.StdEncoding.EncodeToString(a.Secret[:]),
			Range:  a.Range.String(),
			Peers:  cfg.Peers,
		}
		if a.DefaultSubnet.IsValid() {
			n.DefaultSubnet = a.DefaultSubnet.String()
		}
		if cfg.DefaultSubnet.IsValid() && cfg.DefaultSubnet != a.DefaultSubnet && !(cfg.DefaultSubnet == a.Range && !a.DefaultSubnet.IsValid()) {
			return false, fmt.Errorf("--ipalloc-default-subnet %s: the network's default subnet is %s; leave the flag out (a joiner takes the network's) or give that one", cfg.DefaultSubnet, orRange(a.DefaultSubnet, a.Range))
		}
	case n != nil:
		s, _ := n.secret()
		if cfg.Password != "" && secretFromPassword(cfg.Password) != s {
			return false, fmt.Errorf("this host is in network %s and --password names another one; run 'weavewg reset' to leave it first", discovery.IDOf(s))
		}
		// Remember peers named now too, so a restart without arguments
		// reconnects.
		for _, p := range cfg.Peers {
			if !slices.Contains(n.Peers, p) {
				n.Peers = append(n.Peers, p)
			}
		}
		cfg.Peers = n.Peers
	case cfg.Password != "":
		s := secretFromPassword(cfg.Password)
		n = &networkState{Secret: base64.StdEncoding.EncodeToString(s[:]), Range: cfg.Range.String(),
			Founder: len(cfg.Peers) == 0, Peers: cfg.Peers, Password: true, DefaultSubnet: subnetText(cfg.DefaultSubnet, cfg.Range)}
		d.seedsRing = len(cfg.Peers) == 0
	default:
		if len(cfg.Peers) > 0 {
			return false, errors.New("to join a network, use 'weavewg join TOKEN' (or give every host the same --password)")
		}
		var s key.Secret
		if _, err := rand.Read(s[:]); err != nil {
			return false, err
		}
		n = &networkState{Secret: base64.StdEncoding.EncodeToString(s[:]), Range: cfg.Range.String(), Founder: true,
			DefaultSubnet: subnetText(cfg.DefaultSubnet, cfg.Range)}
		created = true
		d.seedsRing = true
	}
	if r, err := netip.ParsePrefix(n.Range); err == nil {
		cfg.Range = r
	}
	if err := resolveDefaultSubnet(cfg, n); err != nil {
		return false, err
	}
	d.secret, _ = n.secret()
	d.network = n
	return created, saveNetwork(cfg.StateDir, n)
}

// resolveDefaultSubnet makes the network's default subnet (network.json)
// this start's: a start without --ipalloc-default-subnet takes it, one
// with another is refused (containers would get addresses the others
// isolate). A network recorded before the default subnet was kept (or
// joined with --password, where each host gives the flag, as under Weave
// Net) records the flag's.
func resolveDefaultSubnet(cfg *Config, n *networkState) error {
	if n.DefaultSubnet == "" {
		n.DefaultSubnet = subnetText(cfg.DefaultSubnet, cfg.Range)
		return nil
	}
	def, err := netip.ParsePrefix(n.DefaultSubnet)
	if err != nil {
		return fmt.Errorf("%s: default subnet %q is corrupt", networkFile, n.DefaultSubnet)
	}
	if cfg.DefaultSubnet.IsValid() && cfg.DefaultSubnet != def {
		return fmt.Errorf("--ipalloc-default-subnet %s: this host's network has the default subnet %s; leave the flag out or give that one ('weavewg reset' leaves the network)", cfg.DefaultSubnet, def)
	}
	cfg.DefaultSubnet = def
	return nil
}

// subnetText is the default subnet as network.json keeps it: "" for none
// or the whole range.
func subnetText(def, rng netip.Prefix) string {
	if !def.IsValid() || def == rng {
		return ""
	}
	return def.String()
}

// orRange is p, or r when p is invalid.
func orRange(p, r netip.Prefix) netip.Prefix {
	if p.IsValid() {
		return p
	}
	return r
}

// loadTokens reads the token registry. lost reports that it should exist
// and does not, or was unreadable: a corrupt file is moved aside to
// tokens.json.corrupt-TIME. A member without its registry refuses tokens
// it does not know until a peer sends the registry (they may have been
// revoked or used up meanwhile). A network new with this start (created
// or joined) has no registry yet: an empty one is written, so that its
// absence later means it was lost.
func loadTokens(dir string, newNetwork bool) (recs []discovery.TokenRecord, lost bool, err error) {
	path := filepath.Join(dir, tokensFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if newNetwork {
			return nil, false, saveTokensFile(dir, []discovery.TokenRecord{})
		}
		return nil, true, fmt.Errorf("%s is missing", tokensFile)
	}
	if err != nil {
		return nil, true, err
	}
	if err := json.Unmarshal(b, &recs); err != nil {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, true, fmt.Errorf("%s is corrupt (%v) and could not be moved aside: %w", tokensFile, err, rerr)
		}
		return nil, true, fmt.Errorf("%s is corrupt (%v); moved it to %s", tokensFile, err, aside)
	}
	return recs, false, nil
}

func saveTokensFile(dir string, recs []discovery.TokenRecord) error {
	b, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, tokensFile), append(b, '\n'), 0o600)
}

// createToken makes a token naming endpoints, or by default this host's
// underlay addresses and those of up to a few reachable members.
func (d *Daemon) createToken(req api.TokenRequest) (api.Token, error) {
	var ttl time.Duration
	if req.TTL != "" {
		t, err := time.ParseDuration(req.TTL)
		if err != nil || t < 0 {
			return api.Token{}, badRequest("ttl %q: want a duration such as 24h or 30m", req.TTL)
		}
		ttl = t
	}
	if req.Uses < 0 || req.Uses > 65535 {
		return api.Token{}, badRequest("uses %d: want 0 (any number) to 65535", req.Uses)
	}
	var eps []discovery.Bootstrap
	for _, e := range req.Endpoints {
		ap, err := netip.ParseAddrPort(e)
		if err != nil {
			a, aerr := netip.ParseAddr(e)
			if aerr != nil {
				return api.Token{}, badRequest("endpoint %q: want IP or IP:PORT", e)
			}
			ap = netip.AddrPortFrom(a, d.cfg.Port)
		}
		eps = append(eps, discovery.Bootstrap{Addr: ap, Key: d.pub})
	}
	if len(eps) == 0 {
		eps = d.defaultEndpoints()
	}
	if len(eps) == 0 {
		return api.Token{}, badRequest("this host has no address another host could reach; name one with --endpoint IP[:PORT]")
	}
	tok, err := d.tokens.CreateToken(ttl, uint16(req.Uses), eps)
	if err != nil {
		return api.Token{}, badRequest("%v", err)
	}
	return tokenAPI(tok), nil
}

func tokenAPI(t discovery.Token) api.Token {
	out := api.Token{Token: t.String(), ID: t.ID.String(), Network: t.Network.String(), Uses: int(t.Uses)}
	if !t.Expiry.IsZero() {
		e := t.Expiry
		out.Expires = &e
	}
	for _, e := range t.Endpoints {
		out.Endpoints = append(out.Endpoints, e.Addr.String())
	}
	return out
}

// defaultEndpoints lists where a joiner may reach this network: this host's
// own global IPv4 addresses (not the overlay's, not container veths), then
// reachable members as gossip sees them.
func (d *Daemon) defaultEndpoints() []discovery.Bootstrap {
	var eps []discovery.Bootstrap
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 ||
			ifc.Name == d.cfg.Iface || ifc.Name == d.cfg.Bridge || strings.HasPrefix(ifc.Name, "veth") {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			ip = ip.Unmap()
			if !ok || !ip.Is4() || !ip.IsGlobalUnicast() || d.cfg.Range.Contains(ip) {
				continue
			}
			eps = append(eps, discovery.Bootstrap{Addr: netip.AddrPortFrom(ip, d.cfg.Port), Key: d.pub})
		}
	}
	for _, p := range d.router.Peers() {
		if len(eps) >= 4 {
			break
		}
		if !p.Self && p.Reachable && p.Endpoint.IsValid() {
			eps = append(eps, discovery.Bootstrap{Addr: p.Endpoint, Key: p.Key})
		}
	}
	return eps
}

func (d *Daemon) listTokens() []api.TokenInfo {
	out := []api.TokenInfo{}
	nick := map[key.Public]string{}
	for _, p := range d.router.Peers() {
		nick[p.Key] = p.Nickname
	}
	now := time.Now()
	for _, r := range d.tokens.Tokens() {
		ti := api.TokenInfo{ID: r.ID.String(), Uses: int(r.Uses), Used: len(r.UsedBy), Revoked: r.Revoked,
			Creator: r.Creator.Name(), CreatorNickname: nick[r.Creator]}
		if !r.Created.IsZero() {
			c := r.Created
			ti.Created = &c
		}
		if !r.Expiry.IsZero() {
			e := r.Expiry
			ti.Expires = &e
			ti.Expired = !now.Before(e)
		}
		out = append(out, ti)
	}
	return out
}

func (d *Daemon) revokeToken(id string) error {
	tid, err := discovery.ParseTokenID(id)
	if err != nil {
		return badRequest("%v", err)
	}
	if err := d.tokens.RevokeToken(tid); err != nil {
		return badRequest("token %s: %v", id, err)
	}
	return nil
}

// secretFromPassword derives the network secret from --password and hands
// Argon2id's 64 MiB back to the system at once: an idle daemon allocates so
// little that the next collection would be minutes away, and until then the
// derivation's memory would count in every daemon's resident size.
func secretFromPassword(password string) key.Secret {
	s := key.SecretFromPassword(password)
	debug.FreeOSMemory()
	return s
}
