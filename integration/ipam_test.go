package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavewg/weavewg/integration/testbed"
	"github.com/weavewg/weavewg/types/api"
)

// Issue 4 acceptance, integration part: address allocation across hosts,
// partitions, restarts and rmpeer. Every check reads what users read:
// `weavewg ps --json`, `weavewg status ipam --json`, and packets.

// statusIPAM runs `weavewg status ipam --json` on h.
func statusIPAM(h *testbed.Host) (api.IPAMStatus, error) {
	var st api.IPAMStatus
	out, err := h.CLIErr("status", "ipam", "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("%s: status ipam --json: %v in %q", h, err, out)
	}
	return st, nil
}

// psJSON runs `weavewg ps --json` on h.
func psJSON(h *testbed.Host) ([]api.Attachment, error) {
	var as []api.Attachment
	out, err := h.CLIErr("ps", "--json")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(out), &as); err != nil {
		return nil, fmt.Errorf("%s: ps --json: %v in %q", h, err, out)
	}
	return as, nil
}

// ringView is a peer's view of the ring as text: one line per owner, its
// ranges sorted, owners sorted; equal views mean agreement.
func ringView(st api.IPAMStatus) string {
	var lines []string
	for _, p := range st.Peers {
		if len(p.Ranges) == 0 {
			continue
		}
		rs := slices.Clone(p.Ranges)
		sort.Strings(rs)
		lines = append(lines, p.Peer+" "+strings.Join(rs, " "))
	}
	sort.Strings(lines)
	return st.Network + "\n" + strings.Join(lines, "\n")
}

// owners maps every range of st to its owner and checks no two ranges
// (of any owners) overlap.
func owners(st api.IPAMStatus) (map[netip.Prefix]string, error) {
	m := map[netip.Prefix]string{}
	var all []netip.Prefix
	for _, p := range st.Peers {
		for _, r := range p.Ranges {
			pr, err := netip.ParsePrefix(r)
			if err != nil {
				return nil, fmt.Errorf("range %q of %s: %v", r, p.Peer, err)
			}
			for _, o := range all {
				if o.Overlaps(pr) {
					return nil, fmt.Errorf("ranges %s (%s) and %s (%s) overlap", o, m[o], pr, p.Peer)
				}
			}
			all = append(all, pr)
			m[pr] = p.Peer
		}
	}
	return m, nil
}

func ownerOf(m map[netip.Prefix]string, a netip.Addr) string {
	for pr, o := range m {
		if pr.Contains(a) {
			return o
		}
	}
	return ""
}

// checkIPAM checks every host's view: the views agree, no ranges overlap,
// the addresses attached anywhere (ps on every host) are distinct and each
// lies in a range its host owns. It returns the attachments by host.
//
// partial allows range owners that are unreachable (one side of a
// partition); otherwise every range owner must be reachable from every host.
func checkIPAM(hs []*testbed.Host, partial bool) (map[*testbed.Host][]api.Attachment, error) {
	var views []string
	var first api.IPAMStatus
	for i, h := range hs {
		st, err := statusIPAM(h)
		if err != nil {
			return nil, err
		}
		if st.Error != "" {
			return nil, fmt.Errorf("%s: status ipam reports an error: %s", h, st.Error)
		}
		for _, p := range st.Peers {
			if !partial && !p.Reachable && len(p.Ranges) > 0 {
				return nil, fmt.Errorf("%s: sees range owner %s(%s) unreachable", h, p.Peer, p.Nickname)
			}
		}
		views = append(views, ringView(st))
		if i == 0 {
			first = st
		} else if views[i] != views[0] {
			return nil, fmt.Errorf("status ipam differs:\n%s:\n%s\n%s:\n%s", hs[0], views[0], h, views[i])
		}
	}
	own, err := owners(first)
	if err != nil {
		return nil, err
	}
	selfName := map[*testbed.Host]string{}
	for _, h := range hs {
		st, err := h.StatusErr()
		if err != nil {
			return nil, err
		}
		selfName[h] = st.Name
	}
	byHost := map[*testbed.Host][]api.Attachment{}
	where := map[netip.Addr]string{}
	for _, h := range hs {
		as, err := psJSON(h)
		if err != nil {
			return nil, err
		}
		byHost[h] = as
		for _, a := range as {
			p, err := netip.ParsePrefix(a.IP)
			if err != nil {
				return nil, fmt.Errorf("%s: attachment %s has address %q", h, a.Name, a.IP)
			}
			if w, dup := where[p.Addr()]; dup {
				return nil, fmt.Errorf("duplicate address %s: %s and %s/%s", p.Addr(), w, h, a.Name)
			}
			where[p.Addr()] = h.Name + "/" + a.Name
			if o := ownerOf(own, p.Addr()); o != selfName[h] {
				return nil, fmt.Errorf("%s/%s has %s, in a range owned by %q, not by its host %s", h, a.Name, p.Addr(), o, selfName[h])
			}
		}
	}
	return byHost, nil
}

// waitIPAM waits until checkIPAM holds and returns its attachments.
func waitIPAM(t *testing.T, hs []*testbed.Host, timeout time.Duration) map[*testbed.Host][]api.Attachment {
	t.Helper()
	var byHost map[*testbed.Host][]api.Attachment
	testbed.Eventually(t, timeout, "status ipam agrees, no duplicate, every address in its host's ranges", func() (err error) {
		byHost, err = checkIPAM(hs, false)
		return err
	})
	return byHost
}

// distinct fails the test if two containers have the same address.
func distinct(t *testing.T, cs []*testbed.Container) {
	t.Helper()
	seen := map[string]*testbed.Container{}
	for _, c := range cs {
		if c.Addr == "" {
			t.Errorf("%s has no address", c)
			continue
		}
		if o, dup := seen[c.Addr]; dup {
			t.Errorf("duplicate address %s: %s and %s", c.Addr, o, c)
		}
		seen[c.Addr] = c
	}
}

// reachable pings every container in cs from each container in from (a raw
// ICMP socket per source, all destinations at once) and fails the test with
// the ones that did not answer within timeout.
func reachable(t *testing.T, from, cs []*testbed.Container, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	pairs := 0
	for _, f := range from {
		var addrs []string
		for _, c := range cs {
			if c != f {
				addrs = append(addrs, c.Addr)
			}
		}
		pairs += len(addrs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			missing, err := testbed.PingAll(f.Netns, addrs, timeout)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("ping from %s: %v", f, err)
			case len(missing) > 0:
				t.Errorf("from %s (%s), %d of %d addresses never answered: %v", f, f.Addr, len(missing), len(addrs), head(missing, 20))
			}
		}()
	}
	wg.Wait()
	t.Logf("reachability: %d sources × %d containers (%d pairs) checked in %.1fs", len(from), len(cs), pairs, time.Since(start).Seconds())
}

func head[T any](s []T, n int) []T {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// sources picks the first and the last container of each host in hs (in
// the order of cs), as ping sources.
func sources(cs []*testbed.Container, hs ...*testbed.Host) []*testbed.Container {
	var out []*testbed.Container
	for _, h := range hs {
		var mine []*testbed.Container
		for _, c := range cs {
			if c.Host == h {
				mine = append(mine, c)
			}
		}
		switch len(mine) {
		case 0:
		case 1:
			out = append(out, mine[0])
		default:
			out = append(out, mine[0], mine[len(mine)-1])
		}
	}
	return out
}

// TestIPAMConcurrentAttach is acceptance 1: three hosts attach 100
// containers each, all at once (4 attaches in flight per host): every
// address is distinct, every address lies in its host's ranges, the hosts
// agree on the ring, and every container answers pings from two containers
// of each host (6 × 299 pairs).
func TestIPAMConcurrentAttach(t *testing.T) {
	const perHost = 100
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	// 6 sources × 300 destinations, and each host's 100 containers: more
	// than the kernel's default shared ARP table takes.
	b.RaiseNeighLimits(4096)
	hs := b.AddHosts(3)
	b.WaitMesh(30*time.Second, hs...)

	start := time.Now()
	cs, errs := attachOnHosts(b, perHost, 4, hs...)
	took := time.Since(start)
	for _, err := range errs {
		t.Errorf("attach: %v", err)
	}
	t.Logf("attached %d containers on 3 hosts in %.1fs (%.0f/s)", len(cs), took.Seconds(), float64(len(cs))/took.Seconds())
	if len(cs) != 3*perHost {
		t.Fatalf("attached %d containers, want %d", len(cs), 3*perHost)
	}
	distinct(t, cs)
	byHost := waitIPAM(t, hs, 30*time.Second)
	for _, h := range hs {
		if n := len(byHost[h]); n != perHost {
			t.Errorf("%s: ps lists %d attachments, want %d", h, n, perHost)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	reachable(t, sources(cs, hs...), cs, 60*time.Second)
}

// addOn attaches n containers on each host in hs (2 at a time per host) and
// fails the test on error, logging how long it took.
func addOn(t *testing.T, b *testbed.Bed, what string, n int, hs ...*testbed.Host) []*testbed.Container {
	t.Helper()
	start := time.Now()
	cs, errs := attachOnHosts(b, n, 2, hs...)
	t.Logf("%s: attached %d containers on %v in %.1fs", what, len(cs), hs, time.Since(start).Seconds())
	for _, err := range errs {
		t.Errorf("%s: %v", what, err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return cs
}

// attachOnHosts attaches n containers on every host of hs at once, par at a
// time per host, and returns them with every error met.
func attachOnHosts(b *testbed.Bed, n, par int, hs ...*testbed.Host) ([]*testbed.Container, []error) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		cs   []*testbed.Container
		errs []error
	)
	for _, h := range hs {
		wg.Go(func() {
			got, err := b.AddContainersParallel(n, par, h)
			mu.Lock()
			defer mu.Unlock()
			cs = append(cs, got...)
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	return cs, errs
}

// sees reports whether h's status shows peer o reachable.
func sees(h, o *testbed.Host) (bool, error) {
	st, err := h.StatusErr()
	if err != nil {
		return false, err
	}
	p := testbed.PeerByNick(st, o.Name)
	return p != nil && p.Reachable, nil
}

// TestIPAMPartition is acceptance 2: partition {h1} | {h2, h3} on the
// underlay, attach on both sides (right after the cut, before the daemons
// notice it, and again once they have), heal: no duplicate address, every
// address in its host's ranges, `status ipam` the same on every peer, every
// container reachable. h3 attaches nothing before the cut, so the space it
// needs must come from a peer on its side.
func TestIPAMPartition(t *testing.T) {
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	hs := b.AddHosts(3)
	A, B, C := hs[0], hs[1], hs[2]
	b.WaitMesh(30*time.Second, hs...)
	cs := addOn(t, b, "before the partition", 3, A, B)
	waitIPAM(t, hs, 30*time.Second)

	b.BlockHosts(A, B)
	b.BlockHosts(A, C)
	cut := time.Now()
	cs = append(cs, addOn(t, b, "right after the cut", 3, A, B, C)...)
	testbed.Eventually(t, 120*time.Second, "both sides notice the partition", func() error {
		for _, pair := range [][2]*testbed.Host{{A, B}, {A, C}, {B, A}, {C, A}} {
			ok, err := sees(pair[0], pair[1])
			if err != nil {
				return err
			}
			if ok {
				return fmt.Errorf("%s still sees %s reachable", pair[0], pair[1])
			}
		}
		return nil
	})
	t.Logf("partition noticed %.1fs after the cut", time.Since(cut).Seconds())
	cs = append(cs, addOn(t, b, "during the partition", 3, A, B, C)...)
	distinct(t, cs)
	// Each side is consistent on its own.
	for _, side := range [][]*testbed.Host{{A}, {B, C}} {
		testbed.Eventually(t, 30*time.Second, fmt.Sprintf("status ipam consistent on side %v", side), func() error {
			_, err := checkIPAM(side, true)
			return err
		})
	}
	reachable(t, sources(cs, B, C), testbed.HostContainers(cs, B, C), 20*time.Second)

	b.UnblockHosts(A, B)
	b.UnblockHosts(A, C)
	heal := time.Now()
	b.WaitMesh(90*time.Second, hs...)
	byHost := waitIPAM(t, hs, 60*time.Second)
	t.Logf("healed: mesh and agreeing status ipam %.1fs after unblocking", time.Since(heal).Seconds())
	n := 0
	for _, as := range byHost {
		n += len(as)
	}
	if n != len(cs) {
		t.Errorf("ps lists %d attachments on the 3 hosts, the test made %d", n, len(cs))
	}
	distinct(t, cs)
	reachable(t, sources(cs, hs...), cs, 30*time.Second)
	// Space still flows after the heal.
	more := addOn(t, b, "after the heal", 2, A, B, C)
	distinct(t, append(cs, more...))
	waitIPAM(t, hs, 30*time.Second)
}

// TestIPAMRestart is acceptance 3: kill -9 a peer (h2) and launch it again
// on the same state dir, once the others have noticed it is gone and have
// attached more without it: the ring is exactly as before (it kept its
// ranges), its containers keep their addresses, everything is reachable,
// and new attachments anywhere get fresh addresses.
func TestIPAMRestart(t *testing.T) {
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	hs := b.AddHosts(3)
	b.WaitMesh(30*time.Second, hs...)
	cs := addOn(t, b, "before the restart", 4, hs...)
	byHost := waitIPAM(t, hs, 30*time.Second)
	stBefore, err := statusIPAM(hs[0])
	if err != nil {
		t.Fatal(err)
	}
	before := ringView(stBefore)

	h := hs[1]
	h.Kill()
	testbed.Eventually(t, 30*time.Second, "h1 and h3 notice h2 is gone", func() error {
		for _, o := range []*testbed.Host{hs[0], hs[2]} {
			if ok, err := sees(o, h); err != nil || ok {
				return fmt.Errorf("%s still sees %s reachable (%v)", o, h, err)
			}
		}
		return nil
	})
	// Life goes on without it.
	cs = append(cs, addOn(t, b, "while h2 is down", 2, hs[0], hs[2])...)
	h.Launch()
	b.WaitMesh(60*time.Second, hs...)
	byHostAfter := waitIPAM(t, hs, 30*time.Second)
	stAfter, err := statusIPAM(h)
	if err != nil {
		t.Fatal(err)
	}
	if after := ringView(stAfter); after != before {
		t.Errorf("the ring changed across the restart of %s:\nbefore:\n%s\nafter:\n%s", h, before, after)
	}
	key := func(as []api.Attachment) string {
		var s []string
		for _, a := range as {
			s = append(s, a.Name+"="+a.IP)
		}
		sort.Strings(s)
		return strings.Join(s, " ")
	}
	if k0, k1 := key(byHost[h]), key(byHostAfter[h]); k0 != k1 {
		// byHost is from before the restart and the attaches while h2 was
		// down; only h2's own list is compared.
		t.Errorf("%s's attachments changed across the restart:\nbefore: %s\nafter:  %s", h, k0, k1)
	}
	reachable(t, sources(cs, hs...), cs, 30*time.Second)
	cs = append(cs, addOn(t, b, "after the restart", 2, hs...)...)
	distinct(t, cs)
	waitIPAM(t, hs, 30*time.Second)

	// The same for h1, which created the network (launched with no peer):
	// back from its state dir it must rejoin the same network, not seed a
	// new one.
	stBefore, err = statusIPAM(hs[0])
	if err != nil {
		t.Fatal(err)
	}
	hs[0].Restart()
	b.WaitMesh(60*time.Second, hs...)
	waitIPAM(t, hs, 30*time.Second)
	if stAfter, err = statusIPAM(hs[0]); err != nil {
		t.Fatal(err)
	}
	if rb, ra := ringView(stBefore), ringView(stAfter); ra != rb {
		t.Errorf("the ring changed across the restart of h1 (the seed):\nbefore:\n%s\nafter:\n%s", rb, ra)
	}
	reachable(t, sources(cs, hs...), cs, 30*time.Second)
}

// TestIPAMRmpeer is acceptance 4: h3 dies for good; `rmpeer h3` runs on h1
// and h2 at the same moment, while h1 and h2 cannot hear each other (run
// together, the first one completes within milliseconds and the second is
// refused, which tests nothing). After the heal exactly one of them ends up owning all of
// h3's ranges, both agree, and the space is used again: the winner can
// claim the address a dead container of h3 had, the loser is refused it,
// and filling the winner's free space allocates every free address of h3's
// old ranges, with no address anywhere twice. The range is a /26 so that
// filling it takes a few dozen attaches.
func TestIPAMRmpeer(t *testing.T) {
	const rng = "10.44.0.0/26"
	b := newBed(t, testbed.Options{Quiet: true, LogLevel: "info"})
	var hs []*testbed.Host
	for i := 1; i <= 3; i++ {
		hs = append(hs, b.AddHost(testbed.HostOptions{HostIP: fmt.Sprintf("10.44.0.%d/26", i), Args: []string{"--ipalloc-range", rng}}))
	}
	h1, h2, h3 := hs[0], hs[1], hs[2]
	b.WaitMesh(30*time.Second, hs...)
	cs := addOn(t, b, "before", 2, hs...)
	waitIPAM(t, hs, 30*time.Second)
	st3, err := statusIPAM(h3)
	if err != nil {
		t.Fatal(err)
	}
	dead := testbed.Self(h3.Status()).Name
	var deadRanges []netip.Prefix
	for _, p := range st3.Peers {
		if p.Peer == dead {
			for _, r := range p.Ranges {
				deadRanges = append(deadRanges, netip.MustParsePrefix(r))
			}
		}
	}
	if len(deadRanges) == 0 {
		t.Fatalf("h3 owns no range: %+v", st3.Peers)
	}
	deadCs := testbed.HostContainers(cs, h3)
	t.Logf("h3 (%s) owns %v; its containers %s %s", dead, deadRanges, deadCs[0].Addr, deadCs[1].Addr)

	h3.Kill()
	testbed.Eventually(t, 30*time.Second, "h1 and h2 see h3 gone", func() error {
		for _, h := range []*testbed.Host{h1, h2} {
			if ok, err := sees(h, h3); err != nil || ok {
				return fmt.Errorf("%s sees h3 reachable (%v)", h, err)
			}
		}
		return nil
	})
	// The two rmpeers must really compete: cut h1 from h2 so that neither
	// hears of the other's before both are issued (and neither can collect
	// the other's vote), then heal.
	b.BlockHosts(h1, h2)
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]error, 2)
	for i, h := range []*testbed.Host{h1, h2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = h.CLIErr("rmpeer", "h3")
		}()
	}
	wg.Wait()
	for i, h := range []*testbed.Host{h1, h2} {
		t.Logf("%s: rmpeer h3: %q %v", h, strings.TrimSpace(outs[i]), errs[i])
	}
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("rmpeer refused while the two could not hear each other")
	}
	// Cut off from each other, neither may complete.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, h := range []*testbed.Host{h1, h2} {
			st, err := statusIPAM(h)
			if err != nil {
				t.Fatal(err)
			}
			for _, tr := range st.Transfers {
				if tr.State == "done" {
					t.Fatalf("%s: transfer %+v completed without the other survivor's vote", h, tr)
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	b.UnblockHosts(h1, h2)

	survivors := []*testbed.Host{h1, h2}
	var winner, loser *testbed.Host
	testbed.Eventually(t, 60*time.Second, "h3's ranges handed to exactly one peer, seen alike by both", func() error {
		if _, err := checkIPAM(survivors, false); err != nil {
			return err
		}
		st, err := statusIPAM(h1)
		if err != nil {
			return err
		}
		own, _ := owners(st)
		heirs := map[string]bool{}
		for pr, o := range own {
			for _, d := range deadRanges {
				if pr.Overlaps(d) {
					heirs[o] = true
				}
			}
		}
		if heirs[dead] || len(heirs) != 1 {
			return fmt.Errorf("h3's old ranges are owned by %v", heirs)
		}
		states := map[string]int{}
		for _, tr := range st.Transfers {
			if tr.Dead == dead {
				states[tr.State]++
			}
		}
		// The loser's transfer is forgotten once the winner's is
		// concluded (ipam/transfer.go, forget): only the Done one stays.
		if states["done"] != 1 || len(states) != 1 {
			return fmt.Errorf("transfers of h3: %+v", st.Transfers)
		}
		for _, h := range survivors {
			if heirs[testbed.Self(h.Status()).Name] {
				winner = h
			} else {
				loser = h
			}
		}
		return nil
	})
	t.Logf("%s took over h3's space; %s did not", winner, loser)

	// The dead container's address, claimed explicitly: the winner may, the
	// loser may not.
	if _, err := loser.AddContainerWithIPErr(deadCs[1].Addr + "/26"); err == nil {
		t.Errorf("%s attached %s, in a range %s owns", loser, deadCs[1].Addr, winner)
	} else {
		t.Logf("%s refused %s as it should: %v", loser, deadCs[1].Addr, err)
	}
	c, err := winner.AddContainerWithIPErr(deadCs[0].Addr + "/26")
	if err != nil {
		t.Fatalf("%s cannot reuse h3's old address: %v", winner, err)
	}
	live := append(testbed.HostContainers(cs, h1, h2), c)

	// Fill the winner: as many attaches as it says it has free.
	var free uint64
	testbed.Eventually(t, 20*time.Second, "winner's free count published", func() error {
		st, err := statusIPAM(winner)
		if err != nil {
			return err
		}
		for _, p := range st.Peers {
			if p.Self {
				if p.Free+p.InUse > p.Size || p.Free == 0 {
					return fmt.Errorf("self entry %+v", p)
				}
				if p.Free != free {
					free = p.Free
					return fmt.Errorf("free %d, checking it is settled", free)
				}
				return nil
			}
		}
		return fmt.Errorf("no self entry")
	})
	live = append(live, addOn(t, b, "filling the winner", int(free), winner)...)
	// And one more: the winner has none left, so this one needs a grant
	// from the loser.
	live = append(live, addOn(t, b, "one beyond", 1, winner)...)
	distinct(t, live)
	byHost := waitIPAM(t, survivors, 30*time.Second)
	used := map[netip.Addr]bool{}
	for _, as := range byHost {
		for _, a := range as {
			used[netip.MustParsePrefix(a.IP).Addr()] = true
		}
	}
	hostIP := map[netip.Addr]bool{}
	for _, h := range hs {
		hostIP[netip.MustParsePrefix(h.HostIP).Addr()] = true
	}
	var unused []netip.Addr
	for _, d := range deadRanges {
		for a := d.Addr(); d.Contains(a); a = a.Next() {
			if !used[a] && !hostIP[a] && a != netip.MustParseAddr("10.44.0.63") && a != netip.MustParseAddr("10.44.0.0") {
				unused = append(unused, a)
			}
		}
	}
	if len(unused) > 0 {
		t.Errorf("after filling %s, these addresses of h3's old ranges are still unused: %v", winner, unused)
	}
	reachable(t, sources(live, survivors...), live, 30*time.Second)
}
