package discovery

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func TestEvictMessageRoundTrip(t *testing.T) {
	priv := newKey(t)
	net := IDOf(testSecret)
	e := EvictRecord{Peer: newKey(t).Public(), Evictor: priv.Public(), Time: time.Unix(1700000000, 5).UTC()}
	e.Sign(priv, net)
	b := AppendEvictMessage(nil, []EvictRecord{e})
	if len(b) != 3+evictRecordLen {
		t.Fatalf("message of %d bytes", len(b))
	}
	got, err := ParseEvictMessage(b)
	if err != nil || len(got) != 1 || got[0] != e {
		t.Fatalf("parsed %+v, %v", got, err)
	}
	if err := got[0].Verify(net); err != nil {
		t.Fatal(err)
	}
	if got[0].Verify(IDOf(key.Secret{9})) == nil {
		t.Error("a record of one network verifies in another")
	}
	forged := got[0]
	forged.Peer = newKey(t).Public()
	if forged.Verify(net) == nil {
		t.Error("a record with another peer still verifies")
	}
	for _, bad := range [][]byte{b[:len(b)-1], append(append([]byte(nil), b...), 0), {2, 0, 0}} {
		if _, err := ParseEvictMessage(bad); err == nil {
			t.Errorf("%x parsed", bad)
		}
	}
}

func FuzzParseEvictMessage(f *testing.F) {
	f.Add(AppendEvictMessage(nil, []EvictRecord{{Time: time.Unix(1, 0)}}))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := ParseEvictMessage(b)
		if err != nil {
			return
		}
		again := AppendEvictMessage(nil, recs)
		if string(again) != string(b) {
			t.Fatalf("round trip changed %x to %x", b, again)
		}
	})
}

// TestEffectiveEvictions: which records count depends on the set alone.
func TestEffectiveEvictions(t *testing.T) {
	a, b, c, d := newKey(t).Public(), newKey(t).Public(), newKey(t).Public(), newKey(t).Public()
	at := func(s int) time.Time { return time.Unix(int64(1000+s), 0) }
	rec := func(peer, by key.Public, s int) EvictRecord { return EvictRecord{Peer: peer, Evictor: by, Time: at(s)} }
	set := func(rs ...EvictRecord) map[evictKey]EvictRecord {
		m := map[evictKey]EvictRecord{}
		for _, r := range rs {
			m[evictKey{r.Peer, r.Evictor}] = r
		}
		return m
	}
	for _, tc := range []struct {
		name string
		recs []EvictRecord
		want []key.Public
	}{
		{"one", []EvictRecord{rec(b, a, 1)}, []key.Public{b}},
		{"evicted member evicts later: ignored", []EvictRecord{rec(b, a, 1), rec(c, b, 2)}, []key.Public{b}},
		{"evicted member's earlier record stands", []EvictRecord{rec(c, b, 1), rec(b, a, 2)}, []key.Public{b, c}},
		{"mutual: the earlier wins", []EvictRecord{rec(b, a, 2), rec(a, b, 1)}, []key.Public{a}},
		{"chain", []EvictRecord{rec(b, a, 1), rec(d, c, 3), rec(c, b, 2)}, []key.Public{b, d}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := effectiveEvictions(set(tc.recs...))
			if len(got) != len(tc.want) {
				t.Fatalf("evicted %d peers, want %d", len(got), len(tc.want))
			}
			for _, k := range tc.want {
				if _, ok := got[k]; !ok {
					t.Errorf("%s not evicted", k.Name())
				}
			}
		})
	}
}

// TestEvictRefusesEverywhere: A evicts C in a mesh A-B-C. B learns it by
// gossip and, like A, drops C's connection and record, refuses C's
// connections afterwards and keeps refusing; C's own later records and
// channel messages are counted and dropped.
func TestEvictRefusesEverywhere(t *testing.T) {
	var saved []EvictRecord
	savedCh := make(chan struct{}, 16)
	a := newTestRouter(t, "a", func(c *Config, _ *tunables) {
		c.SaveEvictions = func(r []EvictRecord) error {
			saved = r
			savedCh <- struct{}{}
			return nil
		}
	})
	b := newTestRouter(t, "b")
	c := newTestRouter(t, "c")
	b.Connect(a.addr())
	c.Connect(b.addr())
	c.Connect(a.addr())
	waitAllReachable(t, a, b, c)
	if _, err := a.Evict(a.Self()); !errors.Is(err, ErrEvictSelf) {
		t.Fatalf("self-eviction: %v", err)
	}
	e, err := a.Evict(c.Self())
	if err != nil {
		t.Fatal(err)
	}
	<-savedCh
	if len(saved) != 1 || saved[0] != e {
		t.Fatalf("saved %+v", saved)
	}
	if _, err := a.Evict(c.Self()); !errors.Is(err, ErrEvicted) {
		t.Fatalf("second eviction: %v", err)
	}
	for _, r := range []*testRouter{a, b} {
		waitFor(t, 10*time.Second, r.cfg.Nickname+" forgets c", func() bool {
			_, known := r.peer(c.Self())
			return !known && r.IsEvicted(c.Self())
		})
	}
	// c keeps dialling (its targets); every attempt is refused after the
	// handshake, and nothing of it comes back.
	waitFor(t, 10*time.Second, "c's connections refused", func() bool {
		return a.Counters()[CtrConnEvicted] > 0 && b.Counters()[CtrConnEvicted] > 0
	})
	time.Sleep(500 * time.Millisecond)
	for _, r := range []*testRouter{a, b} {
		if _, known := r.peer(c.Self()); known {
			t.Errorf("%s has c in its table again", r.cfg.Nickname)
		}
		if got := r.Evictions(); len(got) != 1 || got[0].Peer != c.Self() || got[0].Evictor != a.Self() {
			t.Errorf("%s evictions %+v", r.cfg.Nickname, got)
		}
	}
	if !c.IsEvicted(c.Self()) {
		t.Error("c was not told of its eviction")
	}
	if n := len(c.Connections()); n == 0 {
		t.Fatal("c has no targets")
	}
	for _, cs := range c.Connections() {
		if cs.State == StateEstablished {
			t.Errorf("c still has an established connection: %+v", cs)
		}
	}

	// A new member learns the eviction from anti-entropy, and a restart
	// with the saved records keeps it.
	d := newTestRouter(t, "d", func(cf *Config, _ *tunables) { cf.Evictions = saved })
	if !d.IsEvicted(c.Self()) {
		t.Fatal("saved eviction not loaded")
	}
	f := newTestRouter(t, "f")
	f.Connect(b.addr())
	waitFor(t, 10*time.Second, "f learns the eviction", func() bool { return f.IsEvicted(c.Self()) })
}

// TestEvictedJoinerRefused: a key evicted from the network cannot come back
// with a token.
func TestEvictedJoinerRefused(t *testing.T) {
	a := newTestRouter(t, "a")
	jk := newKey(t)
	if _, err := a.Evict(jk.Public()); err != nil {
		t.Fatal(err)
	}
	tok, err := a.CreateToken(time.Hour, 0, []Bootstrap{{Addr: addrPortOf(a.Addr()), Key: a.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Join(context.Background(), JoinConfig{Private: jk, Token: tok, Timeout: 5 * time.Second})
	if !errors.Is(err, ErrJoinRefused) {
		t.Fatalf("evicted joiner: %v", err)
	}
	if a.Counters()[CtrJoinEvicted] != 1 {
		t.Errorf("control_join_evicted = %d", a.Counters()[CtrJoinEvicted])
	}
	if _, err := Join(context.Background(), JoinConfig{Private: newKey(t), Token: tok, Timeout: 5 * time.Second}); err != nil {
		t.Fatalf("another joiner: %v", err)
	}
}

// waitAllReachable waits until each of rs sees every other as reachable.
func waitAllReachable(t *testing.T, rs ...*testRouter) {
	t.Helper()
	waitFor(t, 10*time.Second, "every router reaching every other", func() bool {
		for _, r := range rs {
			n := 0
			for _, p := range r.Peers() {
				if p.Reachable && !p.Self {
					n++
				}
			}
			if n != len(rs)-1 {
				return false
			}
		}
		return true
	})
}
