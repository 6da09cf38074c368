package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/ipam"
)

// allocate finds the address for attachment id in subnet (invalid: the
// default subnet, or the subnet a CIDR ipReq names): ipReq (claimed,
// refused if another peer owns it or it is taken) or the next free one,
// waiting up to wait for address space while this peer joins or asks a
// peer for a range. The address carries the subnet's prefix length.
// Giving up, it says why in a sentence (noSpaceReason).
func (d *Daemon) allocate(ctx context.Context, id, ipReq string, subnet netip.Prefix, wait time.Duration) (netip.Prefix, error) {
	if ipReq != "" {
		ip, err := netip.ParsePrefix(ipReq)
		if err != nil {
			addr, aerr := netip.ParseAddr(ipReq)
			if aerr != nil {
				return netip.Prefix{}, badRequest("address %q is not an IPv4 address or CIDR", ipReq)
			}
			if !subnet.IsValid() {
				subnet = d.defaultSubnet()
				if !subnet.Contains(addr) && d.isolating() {
					return netip.Prefix{}, badRequest("address %s is outside the default subnet %s; give it as CIDR with its subnet's prefix length, or with --net", addr, subnet)
				}
			}
			ip = netip.PrefixFrom(addr, subnet.Bits())
		}
		if subnet.IsValid() && ip.Masked() != subnet {
			return netip.Prefix{}, badRequest("address %s is not in subnet %s", ip, subnet)
		}
		if err := d.checkAddress(ip); err != nil {
			return netip.Prefix{}, err
		}
		if err := d.ipam.Claim(ip.Addr(), id); err != nil {
			return netip.Prefix{}, d.ipamError(ip.Addr(), err)
		}
		return ip, nil
	}
	if !subnet.IsValid() {
		subnet = d.defaultSubnet()
	}
	bits := subnet.Bits()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	logged := time.Time{}
	for {
		updated := d.ipam.Updated()
		addr, err := d.allocateIn(id, subnet)
		if err == nil {
			if !logged.IsZero() {
				d.log.Info("got address space; attaching", "id", id, "waited", time.Since(start).Round(time.Millisecond).String())
			}
			return netip.PrefixFrom(addr, bits), nil
		}
		if !errors.Is(err, ipam.ErrWaitingForSpace) {
			return netip.Prefix{}, err
		}
		if now := time.Now(); now.Sub(logged) >= 5*time.Second {
			// The daemon's progress line, for callers that show none
			// (Docker); the CLI shows its own.
			logged = now
			d.log.Info("waiting for address space", "id", id, "reason", d.noSpaceReason(), "waited", now.Sub(start).Round(time.Second).String(), "timeout", wait.String())
		}
		select {
		case <-updated:
		case <-time.After(tickInterval):
		case <-ctx.Done():
			return netip.Prefix{}, fmt.Errorf("no address after waiting %s: %s", time.Since(start).Round(time.Second), d.noSpaceReason())
		}
	}
}

// noSpaceReason says in a sentence why this peer cannot hand out an
// address now.
func (d *Daemon) noSpaceReason() string {
	st := d.ipam.Status()
	if !st.Seed.IsZero() {
		return "no free address here and no peer with free space granted a range (are the peers that own the range reachable? see weavewg status ipam)"
	}
	conns := d.router.Connections()
	if len(conns) == 0 {
		return "this peer has not received the network's address ring and has no peer to get it from (give launch a --peer, or run weavewg connect HOST)"
	}
	var established int
	var failing []string
	for _, c := range conns {
		if c.State == discovery.StateEstablished {
			established++
			continue
		}
		s := c.Addr + " " + c.State
		if c.Err != "" {
			s += " (" + c.Err + ")"
		}
		failing = append(failing, s)
	}
	if established == 0 {
		return "no peer is reachable, so this peer has not received the network's address ring: " + strings.Join(failing, "; ")
	}
	return fmt.Sprintf("connected to %d peer(s), but the network's address ring has not arrived from them yet (is this the same network? see weavewg status ipam)", established)
}
