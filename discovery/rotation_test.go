package discovery

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

func TestRotationSealAndParse(t *testing.T) {
	rot := newKey(t)
	a, b, stranger := newKey(t), newKey(t), newKey(t)
	net := IDOf(testSecret)
	s := key.Secret{7, 7, 7}
	parts, err := makeRotation(rot, net, 3, 12345, s, []key.Public{a.Public(), b.Public()})
	if err != nil || len(parts) != 1 {
		t.Fatal(parts, err)
	}
	p, err := ParseRotation(parts[0].raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := key.Verify(p.Rotator, rotationDomain, p.signedBytes(net), &p.Sig); err != nil {
		t.Fatal(err)
	}
	for _, k := range []key.Private{a, b} {
		got, err := p.open(k, net)
		if err != nil || got != s {
			t.Fatalf("open: %v", err)
		}
	}
	if _, err := p.open(stranger, net); !errors.Is(err, ErrNotRecipient) {
		t.Errorf("a stranger: %v", err)
	}
	if _, err := p.open(a, IDOf(key.Secret{9})); err == nil {
		t.Error("opened under another network")
	}
	// A relay that swaps a sealed box breaks the signature.
	bad := append([]byte(nil), parts[0].raw...)
	bad[rotationHdrLen+key.Len] ^= 1
	q, err := ParseRotation(bad)
	if err != nil {
		t.Fatal(err)
	}
	if key.Verify(q.Rotator, rotationDomain, q.signedBytes(net), &q.Sig) == nil {
		t.Error("a changed rotation still verifies")
	}
	for _, b := range [][]byte{parts[0].raw[:len(parts[0].raw)-1], append(append([]byte(nil), parts[0].raw...), 0)} {
		if _, err := ParseRotation(b); err == nil {
			t.Error("a truncated or extended rotation parsed")
		}
	}
}

func FuzzParseRotation(f *testing.F) {
	parts, _ := makeRotation(key.Private{1}, NetworkID{}, 1, 1, key.Secret{}, []key.Public{{9}})
	f.Add(parts[0].raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		rot, err := ParseRotation(b)
		if err != nil {
			return
		}
		if got := AppendRotation(nil, rot); string(got) != string(b) {
			t.Fatalf("round trip changed %x to %x", b, got)
		}
	})
}

// savedSecrets captures a router's saved epochs.
type savedSecrets struct {
	mu sync.Mutex
	st SecretState
}

func (s *savedSecrets) save(st SecretState) error {
	s.mu.Lock()
	s.st = st
	s.mu.Unlock()
	return nil
}

func (s *savedSecrets) get() SecretState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

func withSavedSecrets(s *savedSecrets, k key.Private) routerOpt {
	return func(c *Config, _ *tunables) {
		c.Private = k
		c.SaveSecrets = s.save
		c.Secrets = s.get()
	}
}

// TestRotateSecret: A rotates in a mesh A-B-C while D is down. A, B and C
// move to epoch 1 and drop epoch 0; every pair agrees on its preshared
// key; a token made before stops working and a new one works; a host with
// a new key and the old secret is refused; D, restarted with its saved
// epoch 0, catches up through a member and rejoins under epoch 1.
func TestRotateSecret(t *testing.T) {
	var sa, sb, sc, sd savedSecrets
	ka, kb, kc, kd := newKey(t), newKey(t), newKey(t), newKey(t)
	a := newTestRouter(t, "a", withSavedSecrets(&sa, ka))
	b := newTestRouter(t, "b", withSavedSecrets(&sb, kb))
	c := newTestRouter(t, "c", withSavedSecrets(&sc, kc))
	d := newTestRouter(t, "d", withSavedSecrets(&sd, kd))
	b.Connect(a.addr())
	c.Connect(a.addr())
	d.Connect(a.addr())
	waitAllReachable(t, a, b, c, d)
	// Never rotated: nobody advertises an epoch, and all hold epoch 0.
	if st := a.Secrets(); st.Epoch != 0 || len(st.Behind) != 0 {
		t.Errorf("before any rotation: epoch %d, %d peers said not to hold it", st.Epoch, len(st.Behind))
	}
	oldTok, err := a.CreateToken(time.Hour, 0, []Bootstrap{{Addr: addrPortOf(a.Addr()), Key: a.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.RotateSecret(nil); err != nil {
		t.Fatal(err)
	}
	// d goes down before it hears of it... it is up here, so stop it now
	// and give it back the state it saved before the rotation.
	d.Close()
	sd.save(SecretState{Epochs: []Epoch{{N: 0, Secret: testSecret}}})
	live := []*testRouter{a, b, c}
	waitFor(t, 20*time.Second, "everyone on epoch 1 only", func() bool {
		for _, r := range live {
			st := r.Secrets()
			if st.Epoch != 1 || len(st.Active) != 1 {
				return false
			}
		}
		return true
	})
	s1 := a.currentSecret().Secret
	if s1 == testSecret || b.currentSecret().Secret != s1 || c.currentSecret().Secret != s1 {
		t.Fatal("the members do not share a new secret")
	}
	for _, x := range live {
		for _, y := range live {
			if x != y && x.PairSecret(y.Self()) != s1 {
				t.Errorf("%s→%s preshared key is not epoch 1's", x.cfg.Nickname, y.cfg.Nickname)
			}
		}
	}
	if st := sc.get(); len(st.Epochs) != 2 || st.Active != 1 || len(st.Rotations) != 1 {
		t.Errorf("c saved %+v", st)
	}
	// The token made before the rotation opens nothing.
	_, err = Join(context.Background(), JoinConfig{Private: newKey(t), Token: oldTok, Timeout: 3 * time.Second})
	if !errors.Is(err, ErrJoinRefused) {
		t.Errorf("token from before the rotation: %v", err)
	}
	newTok, err := a.CreateToken(time.Hour, 0, []Bootstrap{{Addr: addrPortOf(a.Addr()), Key: a.Self()}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Join(context.Background(), JoinConfig{Private: newKey(t), Token: newTok, Timeout: 3 * time.Second})
	if err != nil || res.Epoch != 1 || res.EpochSecret != s1 || res.Secret != testSecret {
		t.Fatalf("join after rotation: %+v, %v", res, err)
	}
	// A host with the old secret and a key of its own gets nothing.
	x := newTestRouter(t, "x")
	x.Connect(a.addr())
	waitFor(t, 10*time.Second, "x refused", func() bool { return a.Counters()[CtrConnStaleSecret] > 0 })
	if p, ok := a.peer(x.Self()); ok && p.Reachable {
		t.Error("x is reachable from a")
	}
	// d comes back with epoch 0 and catches up.
	d2 := newTestRouter(t, "d2", withSavedSecrets(&sd, kd))
	d2.Connect(c.addr())
	waitFor(t, 20*time.Second, "d caught up and reachable", func() bool {
		p, ok := a.peer(kd.Public())
		return d2.Secrets().Epoch == 1 && ok && p.Reachable
	})
	if d2.currentSecret().Secret != s1 {
		t.Error("d holds another secret")
	}
	if c.Counters()[CtrCatchUpServed] == 0 {
		t.Error("c served no catch-up")
	}

	// A member's rotation far ahead (an epoch near 2^32 would make the
	// next one wrap) and one by an evicted member change nothing.
	bad := b.Counters()[CtrRotationBad]
	far, _ := makeRotation(kc, a.network, 1<<31, time.Now().UnixNano(), key.Secret{1}, []key.Public{kb.Public()})
	b.applyRotation(c.Self(), far[0])
	if _, err := a.Evict(kd.Public()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b learns d's eviction", func() bool { return b.IsEvicted(kd.Public()) })
	byEvicted, _ := makeRotation(kd, a.network, 2, time.Now().UnixNano(), key.Secret{2}, []key.Public{kb.Public()})
	b.applyRotation(c.Self(), byEvicted[0])
	if st := b.Secrets(); st.Epoch != 1 || b.Counters()[CtrRotationBad] != bad+2 {
		t.Errorf("b took a bad rotation: %+v, %d refused", st, b.Counters()[CtrRotationBad]-bad)
	}
}

// TestPairEpoch: the pair's preshared key is the newest epoch both hold,
// judged by what the peer advertised.
func TestPairEpoch(t *testing.T) {
	r := newTestRouter(t, "r")
	s0, s1, s1other := testSecret, key.Secret{11}, key.Secret{12}
	peer := newKey(t).Public()
	r.mu.Lock()
	r.epochs = []Epoch{{0, s0}, {1, s1}}
	r.activeFrom = 0
	r.mu.Unlock()
	for _, tc := range []struct {
		name string
		ad   *epochAd
		want key.Secret
	}{
		{"nothing advertised: the oldest active", nil, s0},
		{"peer behind", &epochAd{0, SecretIDOf(s0)}, s0},
		{"both on 1", &epochAd{1, SecretIDOf(s1)}, s1},
		{"peer ahead: our newest", &epochAd{2, SecretID{1}}, s1},
		{"another rotation of 1: the common 0", &epochAd{1, SecretIDOf(s1other)}, s0},
	} {
		r.mu.Lock()
		delete(r.peerAds, peer)
		if tc.ad != nil {
			r.peerAds[peer] = *tc.ad
		}
		r.mu.Unlock()
		if got := r.PairSecret(peer); got != tc.want {
			t.Errorf("%s: got %x, want %x", tc.name, got[:2], tc.want[:2])
		}
	}
}
