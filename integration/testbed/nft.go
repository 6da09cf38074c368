package testbed

import (
	"fmt"
	"os/exec"
	"strings"
)

// The underlay filter: a bridge-family table in the underlay namespace whose
// forward chain drops frames between blocked address pairs. Nothing else is
// filtered; ARP always passes.
const nftTable = `table bridge wwg {
	set blocked {
		type ipv4_addr . ipv4_addr
	}
	chain fw {
		type filter hook forward priority 0; policy accept;
		ip saddr . ip daddr @blocked counter drop
	}
}
`

func (b *Bed) nft(script string) error {
	cmd := exec.Command("ip", "netns", "exec", b.Underlay, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft: %v: %s\nscript:\n%s", err, strings.TrimSpace(string(out)), script)
	}
	return nil
}

func (b *Bed) ensureNft() {
	b.tb.Helper()
	b.mu.Lock()
	done := b.nftSet
	b.nftSet = true
	b.mu.Unlock()
	if done {
		return
	}
	if err := b.nft(nftTable); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
}

// Block drops every IPv4 packet between underlay addresses a and b, both
// directions, on the underlay bridge.
func (b *Bed) Block(a, c string) {
	b.tb.Helper()
	b.ensureNft()
	if err := b.nft(fmt.Sprintf("add element bridge wwg blocked { %s . %s, %s . %s }\n", a, c, c, a)); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	b.logf("testbed: underlay blocked %s <-> %s", a, c)
}

// Unblock undoes Block.
func (b *Bed) Unblock(a, c string) {
	b.tb.Helper()
	b.ensureNft()
	if err := b.nft(fmt.Sprintf("delete element bridge wwg blocked { %s . %s, %s . %s }\n", a, c, c, a)); err != nil {
		b.tb.Fatalf("testbed: %v", err)
	}
	b.logf("testbed: underlay unblocked %s <-> %s", a, c)
}

// BlockHosts blocks the underlay path between two hosts.
func (b *Bed) BlockHosts(h1, h2 *Host) { b.tb.Helper(); b.Block(h1.UnderlayIP, h2.UnderlayIP) }

// UnblockHosts undoes BlockHosts.
func (b *Bed) UnblockHosts(h1, h2 *Host) { b.tb.Helper(); b.Unblock(h1.UnderlayIP, h2.UnderlayIP) }
