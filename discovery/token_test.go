package discovery

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func testToken(t testing.TB) Token {
	var k key.Public
	k[0] = 7
	tok := Token{
		Network:   IDOf(testSecret),
		Expiry:    time.Unix(1900000000, 0).UTC(),
		Uses:      1,
		Endpoints: []Bootstrap{{Addr: netip.MustParseAddrPort("192.0.2.1:6783"), Key: k}},
	}
	tok.ID[0] = 9
	tok.JoinKey = JoinKey(testSecret, tok.Network, tok.ID, tok.Expiry, tok.Uses)
	return tok
}

func TestTokenRoundTripAndTypos(t *testing.T) {
	tok := testToken(t)
	s := tok.String()
	if !strings.HasPrefix(s, TokenPrefix) || strings.ContainsAny(s, " \n+/=") {
		t.Fatalf("token text %q is not one copy-pastable line", s)
	}
	got, err := ParseToken("  '" + s + "'\n")
	if err != nil || got.String() != s {
		t.Fatalf("round trip: %v", err)
	}
	if strings.Contains(s, base64.RawURLEncoding.EncodeToString(testSecret[:8])) {
		t.Fatal("the token contains the network secret")
	}
	// Every single-character change is caught before any traffic.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := len(TokenPrefix); i < len(s); i++ {
		c := alphabet[(strings.IndexByte(alphabet, s[i])+1)%len(alphabet)]
		bad := s[:i] + string(c) + s[i+1:]
		if _, err := ParseToken(bad); err == nil {
			t.Fatalf("token with character %d changed parsed fine", i)
		}
	}
	for _, bad := range []string{"", "hello", "wwg1-", "wwg1-!!!", s[:len(s)-3], s + "AA"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) succeeded", bad)
		}
	}
	if _, err := ParseToken("wwg2-AAAA"); !errors.Is(err, ErrTokenFormat) {
		t.Errorf("a foreign prefix: %v", err)
	}
}

func TestTokenRecordsRoundTrip(t *testing.T) {
	var a, b key.Public
	a[0], b[0] = 1, 2
	recs := []TokenRecord{
		{ID: TokenID{1}, Expiry: time.Unix(1800000000, 0).UTC(), Uses: 3, Creator: a, Created: time.Unix(1700000000, 0).UTC(), UsedBy: []key.Public{a, b}},
		{ID: TokenID{2}, Revoked: true},
	}
	got, err := ParseTokenRecords(AppendTokenRecords(nil, recs))
	if err != nil || len(got) != 2 || !got[0].Expiry.Equal(recs[0].Expiry) || len(got[0].UsedBy) != 2 || !got[1].Revoked {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	// Merge is an OR of revocations and a union of uses: order-free.
	x := TokenRecord{UsedBy: []key.Public{a}}
	y := TokenRecord{UsedBy: []key.Public{b}, Revoked: true}
	xy, yx := x, y
	mergeToken(&xy, y)
	mergeToken(&yx, x)
	if !xy.Revoked || !yx.Revoked || len(xy.UsedBy) != 2 || len(yx.UsedBy) != 2 || xy.UsedBy[0] != yx.UsedBy[0] {
		t.Fatalf("merge not commutative: %+v vs %+v", xy, yx)
	}
	if mergeToken(&xy, y) {
		t.Fatal("merge not idempotent")
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add(testToken(f).String())
	f.Add("wwg1-AQ")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again.String() != tok.String() {
			t.Fatalf("re-encoding a parsed token failed: %v", err)
		}
	})
}

func FuzzParseTokenRecords(f *testing.F) {
	var a key.Public
	a[3] = 1
	f.Add(AppendTokenRecords(nil, []TokenRecord{{ID: TokenID{1}, Uses: 2, UsedBy: []key.Public{a}}}))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := ParseTokenRecords(b)
		if err != nil {
			return
		}
		if _, err := ParseTokenRecords(AppendTokenRecords(nil, recs)); err != nil {
			t.Fatalf("re-encoding failed: %v", err)
		}
	})
}

// bootstrapOf names r as a token endpoint.
func bootstrapOf(r *testRouter) Bootstrap {
	return Bootstrap{Addr: netip.MustParseAddrPort(r.addr()), Key: r.Self()}
}

func TestJoinWithToken(t *testing.T) {
	// joinTimeout bounds each join; success and refusals return at once. It
	// is generous because a handshake under -race on a loaded 2-core machine
	// has taken over a second, and a retry after it got the rest of a 3 s
	// budget as its dial deadline.
	const joinTimeout = 10 * time.Second
	m := newTestRouter(t, "member")
	m.cfg.Range = netip.MustParsePrefix("10.32.0.0/12")
	ctx := context.Background()
	join := func(tok Token) (JoinResult, error) {
		return Join(ctx, JoinConfig{Private: newKey(t), Token: tok, Nickname: "joiner", Timeout: joinTimeout})
	}

	tok, err := m.CreateToken(time.Hour, 1, []Bootstrap{bootstrapOf(m)})
	if err != nil {
		t.Fatal(err)
	}
	joiner := newKey(t)
	res, err := Join(ctx, JoinConfig{Private: joiner, Token: tok, Timeout: joinTimeout})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if res.Secret != testSecret || res.Range.String() != "10.32.0.0/12" || res.DefaultSubnet.IsValid() || res.By.Key != m.Self() {
		t.Fatalf("admission = %+v", res)
	}
	// The same host again is a rejoin, not a second use.
	if _, err := Join(ctx, JoinConfig{Private: joiner, Token: tok, Timeout: joinTimeout}); err != nil {
		t.Fatalf("rejoin with a single-use token: %v", err)
	}
	if _, err := join(tok); err == nil || !strings.Contains(err.Error(), "used already") {
		t.Fatalf("second host with a single-use token: %v", err)
	}
	// The member counts after answering, so the joiner may return first.
	waitFor(t, 2*time.Second, "2 admissions and 1 refusal counted", func() bool {
		return m.Counters()[CtrJoinAdmitted] == 2 && m.Counters()[CtrJoinRefused] == 1
	})
	// A network with isolated subnets tells its default subnet.
	m.cfg.DefaultSubnet = netip.MustParsePrefix("10.32.0.0/16")
	tokDef, err := m.CreateToken(time.Hour, 1, []Bootstrap{bootstrapOf(m)})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := join(tokDef); err != nil || res.DefaultSubnet != m.cfg.DefaultSubnet || res.Range != m.cfg.Range {
		t.Fatalf("admission into a network with a default subnet = %+v, %v", res, err)
	}

	// Revoked.
	tok2, _ := m.CreateToken(time.Hour, 0, []Bootstrap{bootstrapOf(m)})
	if err := m.RevokeToken(tok2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := join(tok2); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked token: %v", err)
	}

	// Expired: refused by the joiner itself, before any traffic.
	tok3, _ := m.CreateToken(time.Hour, 0, []Bootstrap{bootstrapOf(m)})
	_, err = Join(ctx, JoinConfig{Private: newKey(t), Token: tok3, Timeout: time.Second,
		Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	if !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired token: %v", err)
	}

	// Altered: a field changed and the checksum recomputed. The member's
	// reply does not match the join key.
	tok4 := tok3
	tok4.Uses = 50
	if _, err := join(tok4); err == nil || !strings.Contains(err.Error(), "altered") {
		t.Fatalf("altered token: %v", err)
	}

	// Another network's token pointed at this member.
	other := newTestRouter(t, "other", withSecret(key.Secret{9}))
	tok5, _ := other.CreateToken(time.Hour, 0, []Bootstrap{bootstrapOf(m)})
	if _, err := join(tok5); err == nil || !strings.Contains(err.Error(), "network") {
		t.Fatalf("token of another network: %v", err)
	}

	// No endpoint answers: bounded, with a sentence saying so.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	tok6, _ := m.CreateToken(time.Hour, 0, []Bootstrap{{Addr: netip.MustParseAddrPort(dead), Key: m.Self()}})
	start := time.Now()
	_, err = Join(ctx, JoinConfig{Private: newKey(t), Token: tok6, Timeout: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "could not reach") || time.Since(start) > 5*time.Second {
		t.Fatalf("unreachable endpoints: %v after %v", err, time.Since(start))
	}

	// The registry travels: a second member learns the tokens and the use.
	m2 := newTestRouter(t, "member2")
	m2.Connect(m.addr())
	waitFor(t, 5*time.Second, "m2 learns the token registry", func() bool {
		for _, r := range m2.Tokens() {
			if r.ID == tok.ID && len(r.UsedBy) == 1 {
				for _, r2 := range m2.Tokens() {
					if r2.ID == tok2.ID && r2.Revoked {
						return true
					}
				}
			}
		}
		return false
	})
	// ...and refuses a second host with the single-use token too.
	if _, err := join(Token{Network: tok.Network, ID: tok.ID, Expiry: tok.Expiry, Uses: tok.Uses, JoinKey: tok.JoinKey,
		Endpoints: []Bootstrap{bootstrapOf(m2)}}); err == nil || !strings.Contains(err.Error(), "used already") {
		t.Fatalf("second member admitted a used single-use token: %v", err)
	}
}

// FuzzJoinResponder feeds arbitrary first messages to a member's responder:
// it must answer or drop, never panic.
func FuzzJoinResponder(f *testing.F) {
	f.Add(make([]byte, 48))
	f.Add(make([]byte, 120))
	f.Add([]byte{1, 2, 3})
	r := newTestRouter(f, "m")
	f.Fuzz(func(t *testing.T, m1 []byte) {
		if len(m1) > maxHandshakeMsg {
			return
		}
		a, b := net.Pipe()
		defer a.Close()
		go func() {
			buf := make([]byte, 1024)
			for {
				if _, err := a.Read(buf); err != nil {
					return
				}
			}
		}()
		b.SetDeadline(time.Now().Add(time.Second))
		if len(m1) > msg1Min {
			r.admit(b, m1)
		} else {
			go func() { writeFrame(a, m1); a.Close() }()
			handshakeResponder(b, r.priv, r.self, []Epoch{{Secret: r.cfg.Secret}})
		}
		b.Close()
	})
}

func TestParseTokenID(t *testing.T) {
	id := TokenID{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4}
	got, err := ParseTokenID(id.String())
	if err != nil || got != id {
		t.Fatalf("ParseTokenID(%s) = %v, %v", id, got, err)
	}
	for _, bad := range []string{"", "xyz", "deadbeef", "deadbeef0102030405"} {
		if _, err := ParseTokenID(bad); err == nil {
			t.Errorf("ParseTokenID(%q) succeeded", bad)
		}
	}
}

// TestLostRegistryAdmitsNobodyUntilSynced is issue 14 item 6: a member
// that lost tokens.json refuses tokens it does not know (one may have been
// revoked meanwhile) until a peer sends the registry; then the revocation
// holds there too. And a registry record whose use count a member raised
// does not let a single-use token admit twice: the count that matters is
// the token's own, bound to it by the join key.
func TestLostRegistryAdmitsNobodyUntilSynced(t *testing.T) {
	ctx := context.Background()
	m := newTestRouter(t, "member")
	m.cfg.Range = netip.MustParsePrefix("10.32.0.0/12")
	revoked, _ := m.CreateToken(time.Hour, 0, []Bootstrap{bootstrapOf(m)})
	if err := m.RevokeToken(revoked.ID); err != nil {
		t.Fatal(err)
	}
	good, _ := m.CreateToken(time.Hour, 0, []Bootstrap{bootstrapOf(m)})

	lost := newTestRouter(t, "lost", func(c *Config, _ *tunables) { c.TokensLost = true })
	lost.cfg.Range = m.cfg.Range
	at := func(tok Token, r *testRouter) Token {
		tok.Endpoints = []Bootstrap{bootstrapOf(r)}
		return tok
	}
	for _, tok := range []Token{revoked, good} {
		_, err := Join(ctx, JoinConfig{Private: newKey(t), Token: at(tok, lost), Timeout: 3 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "lost its token registry") {
			t.Fatalf("unsynced member admitted (or refused oddly): %v", err)
		}
	}
	if lost.Counters()[CtrJoinUnsynced] != 2 {
		t.Errorf("unsynced refusals counted %d", lost.Counters()[CtrJoinUnsynced])
	}
	lost.Connect(m.addr())
	waitFor(t, 5*time.Second, "the registry arrives", func() bool {
		for _, r := range lost.Tokens() {
			if r.ID == revoked.ID && r.Revoked {
				return true
			}
		}
		return false
	})
	if _, err := Join(ctx, JoinConfig{Private: newKey(t), Token: at(revoked, lost), Timeout: 3 * time.Second}); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked token after sync: %v", err)
	}
	if _, err := Join(ctx, JoinConfig{Private: newKey(t), Token: at(good, lost), Timeout: 3 * time.Second}); err != nil {
		t.Fatalf("good token after sync: %v", err)
	}

	// A forged registry record raising a single-use token's count.
	single, _ := m.CreateToken(time.Hour, 1, []Bootstrap{bootstrapOf(m)})
	if _, err := Join(ctx, JoinConfig{Private: newKey(t), Token: single, Timeout: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.tokens[single.ID].Uses = 0 // as a merged forgery would leave it
	m.mu.Unlock()
	if _, err := Join(ctx, JoinConfig{Private: newKey(t), Token: single, Timeout: 3 * time.Second}); err == nil || !strings.Contains(err.Error(), "used already") {
		t.Fatalf("single-use token admitted twice after its record was raised: %v", err)
	}
}

// A member with an empty token registry sends nothing in its
// anti-entropy rounds (each was a signed channel message, checked by its
// recipient, every round on every member of a mesh without tokens); once
// a token exists the rounds carry the registry again.
func TestEmptyRegistryRoundsSendNothing(t *testing.T) {
	a := newTestRouter(t, "a")
	b := newTestRouter(t, "b")
	if err := b.Connect(a.addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a and b reach each other", func() bool {
		_, ok := a.peer(b.Self())
		return ok && len(a.Reachable()) == 2 && len(b.Reachable()) == 2
	})
	rounds := func() uint64 { return a.Counters()[CtrAntiEntropy] }
	sent := a.Counters()[CtrChannelSent]
	r0 := rounds()
	waitFor(t, 30*time.Second, "three anti-entropy rounds", func() bool { return rounds() >= r0+3 })
	if got := a.Counters()[CtrChannelSent]; got != sent {
		t.Fatalf("three rounds with an empty token registry sent %d channel messages; want none", got-sent)
	}
	tok, err := b.CreateToken(time.Hour, 0, []Bootstrap{bootstrapOf(b)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the token reaches a", func() bool {
		for _, r := range a.Tokens() {
			if r.ID == tok.ID {
				return true
			}
		}
		return false
	})
	sent = a.Counters()[CtrChannelSent]
	waitFor(t, 30*time.Second, "a round that sends the registry", func() bool { return a.Counters()[CtrChannelSent] > sent })
}
