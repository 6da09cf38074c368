package tunnel

import (
	"testing"
	"time"

	"github.com/weavewg/weavewg/types/key"
)

// TestRehandshake: a peer coming back from the kernel device holds a
// session wireguard-go cannot read, so Rehandshake must send a handshake
// initiation at once although wireguard-go's own session is fresh (left
// alone, it would send data on it and not handshake again for two
// minutes), and the pair must carry data on the new session.
func TestRehandshake(t *testing.T) {
	a, b := twoHosts(t)
	if out, err := ping(a.ns, "10.32.0.2"); err != nil {
		t.Fatalf("host a → host b: %v\n%s\n%s", err, out, dump(a, b))
	}
	first := b.tun.PeerStats()[a.priv.Public()].LastHandshake
	if first.IsZero() {
		t.Fatal("b has no handshake with a after a ping")
	}
	deadline := time.Now().Add(30 * time.Second)
	for a.tun.bind.handshakesPending() {
		if time.Now().After(deadline) {
			t.Fatal("a's handshake messages still unanswered 30 s after a ping went through")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// b hears nothing for now, so what a sends stays unanswered (pending
	// in a's Bind) and can be told apart from data.
	nft := func(args ...string) { run(t, append([]string{"ip", "netns", "exec", b.ns.Name, "nft"}, args...)...) }
	nft("add", "table", "inet", "rehandshake")
	nft("add", "chain", "inet", "rehandshake", "in", "{ type filter hook input priority 0; }")
	nft("add", "rule", "inet", "rehandshake", "in", "udp", "dport", "6783", "drop")
	a.tun.Rehandshake(map[key.Public]bool{a.priv.Public(): true}) // unknown (itself): ignored
	a.tun.Rehandshake(map[key.Public]bool{b.priv.Public(): true})
	a.tun.bind.hs.mu.Lock()
	var initiations int
	for _, p := range a.tun.bind.hs.pending {
		if p.typ == wgTypeInitiation {
			initiations++
		}
	}
	a.tun.bind.hs.mu.Unlock()
	if initiations != 1 {
		t.Fatalf("Rehandshake left %d handshake initiations pending in a's Bind; want 1, sent at once", initiations)
	}
	nft("delete", "table", "inet", "rehandshake")
	deadline = time.Now().Add(30 * time.Second)
	for !b.tun.PeerStats()[a.priv.Public()].LastHandshake.After(first) {
		if time.Now().After(deadline) {
			t.Fatalf("no new handshake on b 30 s after a's Rehandshake (the last at %v)\n%s", first, dump(a, b))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := ping(b.ns, "10.32.0.1"); err != nil {
		t.Fatalf("host b → host a after the new handshake: %v\n%s\n%s", err, out, dump(a, b))
	}
}
