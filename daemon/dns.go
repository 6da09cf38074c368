package daemon

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/weavewg/weavewg/dns"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/attachment"
	"github.com/weavewg/weavewg/types/key"
)

// dnsChannel is the gossip channel that carries the name table.
const dnsChannel = "dns"

// startDNS creates the name server, joins it to the gossip channel and starts
// it on the host's overlay address. With --no-dns there is no server: names
// are neither served nor gossiped from here.
func (d *Daemon) startDNS(open channelOpener) error {
	if d.cfg.NoDNS {
		return nil
	}
	// With no host address yet, the server follows gossip now and
	// listens once IPAM gives one (adoptHostIP).
	listen := d.cfg.DNSListen
	if hp := d.hostPrefix(); listen == "" && hp.IsValid() {
		listen = net.JoinHostPort(hp.Addr().String(), "53")
	}
	srv, err := dns.New(dns.Config{
		Self:         d.pub,
		ListenAddr:   listen,
		Domain:       d.cfg.DNSDomain,
		TTL:          d.cfg.DNSTTL,
		OverlayRange: d.cfg.Range,
		// Only the overlay: the host's underlay neighbours get no answers
		// and no forwarding (host processes query from the overlay address).
		Clients:    []netip.Prefix{d.cfg.Range},
		Upstreams:  d.cfg.DNSUpstreams,
		ResolvConf: d.cfg.DNSResolvConf,
		Logger:     d.log.With("part", "dns"),
	})
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	ch, err := open(dnsChannel, func(from key.Public, msg []byte) {
		// A malformed message is counted by the server; gossip goes on.
		srv.HandleMessage(from, msg)
	})
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	srv.SetTransport(ch)
	if err := srv.Start(); err != nil {
		return fmt.Errorf("dns server on %s: %w (use --no-dns to run without it)", listen, err)
	}
	d.dns = srv
	return nil
}

// dnsAddAttachment registers an attachment's name once it has an interface.
func (d *Daemon) dnsAddAttachment(rec attachment.Record) {
	if d.dns == nil || rec.Name == "" || !rec.Plumbed() {
		return
	}
	p, ok := rec.Prefix()
	if !ok {
		return
	}
	if err := d.dns.AddEntry(rec.Name, p.Addr(), rec.ID); err != nil {
		d.log.Warn("attachment name not registered in DNS", "name", rec.Name, "err", err)
	}
}

func (d *Daemon) dnsRemoveAttachment(rec attachment.Record) {
	if d.dns == nil || rec.ID == "" {
		return
	}
	d.dns.RemoveEntries("", netip.Addr{}, rec.ID)
}

func (d *Daemon) dnsStatus(withEntries bool) api.DNSStatus {
	if d.dns == nil {
		return api.DNSStatus{Enabled: false, Entries: []api.DNSEntry{}}
	}
	st := api.DNSStatus{
		Enabled: true,
		Domain:  d.dns.Domain(),
		TTL:     int(d.cfg.DNSTTL.Seconds()),
		Entries: []api.DNSEntry{},
	}
	if st.TTL == 0 {
		st.TTL = int(dns.DefaultTTL.Seconds())
	}
	if a := d.dns.Addr(); a != nil {
		st.Listen = a.String()
	}
	if !withEntries {
		return st
	}
	nick := map[key.Public]string{}
	for _, p := range d.router.Peers() {
		nick[p.Key] = p.Nickname
	}
	for _, e := range d.dns.Entries() {
		st.Entries = append(st.Entries, api.DNSEntry{
			Name:      e.Name + "." + st.Domain,
			Address:   e.Addr.String(),
			Peer:      e.Owner.Name(),
			Nickname:  nick[e.Owner],
			Origin:    e.Origin,
			Reachable: e.Reachable,
		})
	}
	return st
}

func (d *Daemon) dnsChange(req api.DNSRequest, add bool) (int, error) {
	if d.dns == nil {
		return 0, badRequest("DNS is off on this host (--no-dns)")
	}
	if add && req.Name == "" {
		return 0, badRequest("a name is required")
	}
	if add && len(req.Addresses) == 0 {
		return 0, badRequest("at least one address is required")
	}
	var addrs []netip.Addr
	for _, s := range req.Addresses {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return 0, badRequest("%q is not an IPv4 address", s)
		}
		addrs = append(addrs, a)
	}
	if add {
		for _, a := range addrs {
			if err := d.dns.AddEntry(req.Name, a, ""); err != nil {
				return 0, badRequest("%v", err)
			}
		}
		return len(addrs), nil
	}
	if len(addrs) == 0 {
		addrs = []netip.Addr{{}}
	}
	n := 0
	for _, a := range addrs {
		k, err := d.dns.RemoveEntries(req.Name, a, "")
		if err != nil {
			return n, badRequest("%v", err)
		}
		n += k
	}
	return n, nil
}

func (d *Daemon) dnsLookup(name string) (api.DNSLookup, error) {
	if d.dns == nil {
		return api.DNSLookup{}, badRequest("DNS is off on this host (--no-dns)")
	}
	addrs, err := d.dns.Lookup(name)
	if err != nil {
		return api.DNSLookup{}, badRequest("%v", err)
	}
	out := api.DNSLookup{Name: name, Addresses: []string{}}
	for _, a := range addrs {
		out.Addresses = append(out.Addresses, a.String())
	}
	return out, nil
}
