package daemon

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/weavewg/weavewg/ipam"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/key"
)

const (
	ipamChannel = "ipam"
	ipamFile    = "ipam.db"
	// tickInterval drives the allocator's periodic work and the checks for
	// vanished namespaces.
	tickInterval = time.Second
	// vanishedGrace is how long an attachment's namespace may be missing
	// before its address is released: long enough to ride out a container
	// runtime re-creating a bind mount, short enough to recycle addresses.
	vanishedGrace = 30 * time.Second
	// antiEntropyTicks is how many ticks pass between full ring broadcasts.
	antiEntropyTicks = 10
)

// openIPAM opens the allocator on the state dir and joins it to gossip. The
// start that creates the network seeds the whole range to itself at once;
// every other peer, and a founder whose ipam.db was lost or set aside as
// corrupt, gets the ring by gossip and asks for space.
func (d *Daemon) openIPAM(open channelOpener) error {
	var alloc *ipam.Allocator
	ch, err := open(ipamChannel, func(from key.Public, msg []byte) {
		if err := alloc.HandleMessage(from, msg); err != nil {
			d.log.Debug("ipam message refused", "from", from.Name(), "err", err)
		}
	})
	if err != nil {
		return fmt.Errorf("ipam: %w", err)
	}
	path := ""
	if !d.cfg.IPAMInMemory {
		path = filepath.Join(d.cfg.StateDir, ipamFile)
	}
	alloc, err = ipam.Open(ipam.Config{
		Self:      d.pub,
		Private:   d.priv,
		Range:     d.cfg.Range,
		Path:      path,
		Transport: ch,
		Logger:    d.log.With("part", "ipam"),
	})
	if err != nil {
		return fmt.Errorf("ipam state %s: %w", path, err)
	}
	d.ipam = alloc
	d.ipamCh = ch
	st := alloc.Status()
	switch {
	case !st.Seed.IsZero():
		d.log.Info("address space from the state dir", "network", st.Seed.String(), "allocated", st.Allocated)
	case d.seedsRing:
		if err := alloc.Seed(); err != nil {
			alloc.Close()
			return fmt.Errorf("ipam: creating the network: %w", err)
		}
		d.log.Info("created a new network: this peer owns the whole range until others ask for space",
			"range", d.cfg.Range.String(), "network", alloc.Status().Seed.String())
	case len(d.cfg.Peers) == 0 && d.cfg.Admission == nil:
		d.log.Warn("no address ring in the state dir, and this start did not create the network: waiting for the ring from the peers (if this host was the network's only member, 'weavewg reset' starts over)",
			"state_file", path)
		alloc.WantSpace()
	default:
		d.log.Info("joining: address space will come from the peers")
		alloc.WantSpace()
	}
	return nil
}

func (d *Daemon) checkAddress(ip netip.Prefix) error {
	if !ip.Addr().Is4() || !d.cfg.Range.Contains(ip.Addr()) {
		return badRequest("address %s is outside the overlay range %s", ip.Addr(), d.cfg.Range)
	}
	if !d.isolating() && ip.Bits() != d.cfg.Range.Bits() {
		return badRequest("address %s must carry the overlay prefix length /%d so containers see one flat subnet (isolated subnets need launch --ipalloc-default-subnet)", ip, d.cfg.Range.Bits())
	}
	if sub := ip.Masked(); d.isolating() && sub != d.cfg.Range && sub != d.defaultSubnet() {
		if err := d.checkSubnet(sub); err != nil {
			return badRequest("address %s: its prefix length makes it part of subnet %s, which is not usable: %s", ip, sub, strings.TrimPrefix(err.Error(), errBadRequest.Error()+": "))
		}
	}
	if ip.Masked() == d.cfg.Range && d.isolating() {
		return badRequest("address %s carries the range's prefix length, but addresses come from subnets here: use /%d for the default subnet %s, or an isolated subnet's", ip, d.defaultSubnet().Bits(), d.defaultSubnet())
	}
	if ip.Addr() == ip.Masked().Addr() || ip.Addr() == lastAddr(ip) {
		return badRequest("address %s is the network or broadcast address of %s", ip.Addr(), ip.Masked())
	}
	if ip.Addr() == d.hostPrefix().Addr() {
		return badRequest("address %s is this host's own overlay address", ip.Addr())
	}
	if owner, ok := d.remoteHost(ip.Addr()); ok {
		return badRequest("address %s is the overlay address of peer %s", ip.Addr(), owner)
	}
	return nil
}

// ipamError words an allocator refusal for the user.
func (d *Daemon) ipamError(addr netip.Addr, err error) error {
	var elsewhere *ipam.OwnedElsewhereError
	switch {
	case errors.As(err, &elsewhere):
		return badRequest("address %s belongs to peer %s's range; attach it there, or omit --ip", addr, d.describe(elsewhere.Owner))
	case errors.Is(err, ipam.ErrAddressTaken):
		return badRequest("address %s is already in use here", addr)
	case errors.Is(err, ipam.ErrReserved):
		return badRequest("address %s is reserved (a host's overlay address)", addr)
	case errors.Is(err, ipam.ErrWaitingForSpace):
		return badRequest("address %s: this peer has not received the network's address ring yet; retry once it is connected", addr)
	}
	return err
}

// describe names a peer the way status does: NAME(nickname).
func (d *Daemon) describe(k key.Public) string {
	for _, p := range d.router.Peers() {
		if p.Key == k {
			return k.Name() + "(" + p.Nickname + ")"
		}
	}
	return k.Name()
}

// remoteHost names the peer whose host address is addr, if any.
func (d *Daemon) remoteHost(addr netip.Addr) (string, bool) {
	for _, p := range d.router.Peers() {
		if !p.Self && p.HostIP == addr {
			return p.Key.Name() + "(" + p.Nickname + ")", true
		}
	}
	return "", false
}

// ipamTick runs once a second from the reconcile loop: the allocator's
// periodic work, automatic reclaim, and releasing vanished namespaces.
func (d *Daemon) ipamTick(now time.Time) {
	d.ipam.Tick()
	d.ticks++
	if d.ticks%antiEntropyTicks == 0 {
		d.ipamAntiEntropy()
	}
	if d.cfg.ReclaimAfter > 0 {
		for _, p := range d.ipam.Reclaim(d.goneSince, d.cfg.ReclaimAfter) {
			d.log.Warn("reclaiming the address space of a peer gone too long", "peer", p.Name(), "after", d.cfg.ReclaimAfter.String())
		}
	}
	if d.members != nil {
		d.reclaimEvicted(now)
	}
	d.releaseVanished(now)
}

// ipamAntiEntropy repairs ring updates lost on the way: it sends a digest
// of the ring to one reachable peer chosen at random, which answers with
// the stretches of its ring that differ (ipam/digest.go), so updates
// spread epidemically (a few rounds) while a round costs each peer one
// small message when the rings agree. A broadcast from every peer every
// round was N² messages of the whole ring per round, and the whole ring
// to one peer O(N) bytes per peer per round (issue 18; sim's node loop
// does the same).
func (d *Daemon) ipamAntiEntropy() {
	if len(d.reachableSet) == 0 || d.ipamCh == nil {
		return
	}
	i := rand.IntN(len(d.reachableSet))
	for k := range d.reachableSet {
		if i == 0 {
			d.ipam.SendDigest(k)
			return
		}
		i--
	}
}

// trackLiveness records when each range owner was last reachable, for
// --reclaim-after. owners are the ring's owners (AllPrefixes, which
// reconcile has already read: taking them from a whole Status was a fifth
// of an idle reconcile's CPU at N=40).
func (d *Daemon) trackLiveness(owners map[key.Public][]netip.Prefix, reachable map[key.Public]bool, now time.Time) {
	for p := range owners {
		if p == d.pub || reachable[p] {
			delete(d.goneSince, p)
			continue
		}
		if _, ok := d.goneSince[p]; !ok {
			d.goneSince[p] = now
		}
	}
}

// rmpeer hands a dead peer's ranges to this one.
func (d *Daemon) rmpeer(name string) (string, error) {
	k, err := d.findPeer(name)
	if err != nil {
		return "", err
	}
	if k == d.pub {
		return "", badRequest("%s is this peer; run rmpeer on another one", name)
	}
	for _, p := range d.router.Peers() {
		if p.Key == k && p.Reachable {
			return "", badRequest("peer %s is reachable; rmpeer is for peers that are gone for good (stop it first)", d.describe(k))
		}
	}
	if err := d.ipam.RemovePeer(k); err != nil {
		return "", badRequest("rmpeer %s: %v", name, err)
	}
	d.log.Warn("rmpeer: taking over a dead peer's address space", "peer", k.Name())
	return k.Name(), nil
}

// findPeer resolves a peer name, nickname or public key among the range
// owners and the gossiped peers.
func (d *Daemon) findPeer(s string) (key.Public, error) {
	if k, err := key.ParsePublic(s); err == nil {
		return k, nil
	}
	var found []key.Public
	seen := map[key.Public]bool{}
	add := func(k key.Public, nick string) {
		if !seen[k] && (k.Name() == s || nick == s) {
			seen[k] = true
			found = append(found, k)
		}
	}
	for _, p := range d.router.Peers() {
		add(p.Key, p.Nickname)
	}
	for _, ps := range d.ipam.Status().Peers {
		add(ps.Peer, "")
	}
	switch len(found) {
	case 0:
		return key.Public{}, badRequest("no peer named %q owns address space or is known", s)
	case 1:
		return found[0], nil
	}
	var names []string
	for _, k := range found {
		names = append(names, k.Name())
	}
	slices.Sort(names)
	return key.Public{}, badRequest("%q is ambiguous: %s; use the peer name", s, strings.Join(names, ", "))
}

func (d *Daemon) ipamStatus() api.IPAMStatus {
	st := d.ipam.Status()
	nick := map[key.Public]string{}
	for _, p := range d.router.Peers() {
		nick[p.Key] = p.Nickname
	}
	total := uint64(1) << (32 - d.cfg.Range.Bits())
	out := api.IPAMStatus{
		Range:     st.Range.String(),
		Allocated: st.Allocated,
		Waiting:   st.WaitingForSpace,
		Error:     st.Err,
		Peers:     []api.IPAMPeer{},
		Transfers: []api.IPAMTransfer{},
	}
	if !st.Seed.IsZero() {
		out.Network = st.Seed.String()
	}
	// Allocation counts are only known for this peer; others publish free
	// counts, from which use follows.
	for _, ps := range st.Peers {
		p := api.IPAMPeer{
			Peer:      ps.Peer.Name(),
			Nickname:  nick[ps.Peer],
			Self:      ps.Peer == d.pub,
			Reachable: ps.Reachable,
			Size:      ps.Size,
			Free:      ps.Free,
			Percent:   100 * float64(ps.Size) / float64(total),
			Ranges:    []string{},
		}
		if p.Self {
			p.InUse = uint64(st.Allocated)
		} else if ps.Size >= ps.Free {
			p.InUse = ps.Size - ps.Free
		}
		for _, pr := range ps.Prefixes {
			p.Ranges = append(p.Ranges, pr.String())
		}
		out.Peers = append(out.Peers, p)
	}
	for _, t := range st.Transfers {
		state := "pending"
		switch {
		case t.Accepted:
			state = "done"
		case t.Done:
			state = "claimed" // the issuer says done; this peer has not concluded it (issue 14)
		case t.Withdrawn:
			state = "withdrawn"
		}
		out.Transfers = append(out.Transfers, api.IPAMTransfer{Dead: t.Dead.Name(), Issuer: d.describe(t.Issuer), State: state})
	}
	return out
}
