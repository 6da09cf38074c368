package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/weavewg/weavewg/tunnel"
	"github.com/weavewg/weavewg/types/api"
)

// errBadRequest marks errors caused by the request rather than the host; the
// API answers them with 400 instead of 500.
var errBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, args...))
}

// adoptAttachments puts the namespaces attached before a restart back on the
// bridge. One whose namespace is gone is dropped from the record: its
// container has stopped.
func (d *Daemon) adoptAttachments() {
	d.mu.Lock()
	defer d.mu.Unlock()
	kept := d.attachments[:0]
	for _, rec := range d.attachments {
		a, err := rec.tunnel()
		if err == nil {
			err = d.tun.Adopt(a)
		}
		if err != nil {
			d.log.Warn("dropping an attachment that is gone", "netns", rec.Netns, "ip", rec.IP, "err", err)
			continue
		}
		d.log.Info("re-adopted attachment", "netns", rec.Netns, "ip", rec.IP)
		kept = append(kept, rec)
		d.dnsAddAttachment(rec)
	}
	d.attachments = kept
	if err := saveAttachments(d.cfg.StateDir, d.attachments); err != nil {
		d.log.Error("saving attachments", "err", err)
	}
	d.publishAttachedLocked()
}

func (rec attachmentRecord) tunnel() (tunnel.Attached, error) {
	ip, err := netip.ParsePrefix(rec.IP)
	if err != nil {
		return tunnel.Attached{}, err
	}
	return tunnel.Attached{Netns: rec.Netns, IP: ip, IfName: rec.IfName, HostVeth: rec.HostVeth, MTU: rec.MTU}, nil
}

func (rec attachmentRecord) api() api.Attachment {
	return api.Attachment{Netns: rec.Netns, IP: rec.IP, Name: rec.Name, Interface: rec.IfName, HostVeth: rec.HostVeth, MTU: rec.MTU}
}

// publishAttachedLocked tells the mesh which addresses live here.
func (d *Daemon) publishAttachedLocked() {
	var ps []netip.Prefix
	for _, rec := range d.attachments {
		if p, err := netip.ParsePrefix(rec.IP); err == nil {
			ps = append(ps, netip.PrefixFrom(p.Addr(), 32))
		}
	}
	d.router.SetAttached(ps)
}

func (d *Daemon) attach(req api.AttachRequest) (api.Attachment, error) {
	if req.Netns == "" {
		return api.Attachment{}, badRequest("netns is required (a path such as /var/run/netns/NAME or /proc/PID/ns/net)")
	}
	if _, err := os.Stat(req.Netns); err != nil {
		return api.Attachment{}, badRequest("network namespace %s: %v", req.Netns, errors.Unwrap(err))
	}
	if req.IP == "" {
		return api.Attachment{}, badRequest("an address is required until automatic allocation exists: --ip ADDR/%d", d.cfg.Range.Bits())
	}
	ip, err := netip.ParsePrefix(req.IP)
	if err != nil {
		addr, aerr := netip.ParseAddr(req.IP)
		if aerr != nil {
			return api.Attachment{}, badRequest("address %q is not an IPv4 address or CIDR", req.IP)
		}
		ip = netip.PrefixFrom(addr, d.cfg.Range.Bits())
	}
	if !ip.Addr().Is4() || !d.cfg.Range.Contains(ip.Addr()) {
		return api.Attachment{}, badRequest("address %s is outside the overlay range %s", ip.Addr(), d.cfg.Range)
	}
	if ip.Bits() != d.cfg.Range.Bits() {
		return api.Attachment{}, badRequest("address %s must carry the overlay prefix length /%d so containers see one flat subnet", ip, d.cfg.Range.Bits())
	}
	if ip.Addr() == d.cfg.Range.Addr() || ip.Addr() == lastAddr(d.cfg.Range) {
		return api.Attachment{}, badRequest("address %s is the network or broadcast address of %s", ip.Addr(), d.cfg.Range)
	}
	if ip.Addr() == d.hostIP.Addr() {
		return api.Attachment{}, badRequest("address %s is this host's own overlay address", ip.Addr())
	}
	if owner, ok := d.remoteOwner(ip.Addr()); ok {
		return api.Attachment{}, badRequest("address %s is already in use on peer %s", ip.Addr(), owner)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rec := range d.attachments {
		if rec.Netns == req.Netns {
			return api.Attachment{}, badRequest("namespace %s is already attached with %s", req.Netns, rec.IP)
		}
		if p, _ := netip.ParsePrefix(rec.IP); p.Addr() == ip.Addr() {
			return api.Attachment{}, badRequest("address %s is already attached here to %s", ip.Addr(), rec.Netns)
		}
	}
	a, err := d.tun.Attach(tunnel.AttachSpec{Netns: req.Netns, IP: ip, IfName: ContainerIfName})
	if err != nil {
		return api.Attachment{}, err
	}
	rec := attachmentRecord{Netns: req.Netns, IP: ip.String(), Name: req.Name, IfName: a.IfName, HostVeth: a.HostVeth, MTU: a.MTU}
	d.attachments = append(d.attachments, rec)
	if err := saveAttachments(d.cfg.StateDir, d.attachments); err != nil {
		// Not recorded means not re-adopted after a restart; undo rather
		// than leave a container the daemon would forget.
		d.attachments = d.attachments[:len(d.attachments)-1]
		d.tun.Detach(a)
		return api.Attachment{}, fmt.Errorf("recording the attachment: %w", err)
	}
	d.publishAttachedLocked()
	d.dnsAddAttachment(rec)
	d.log.Info("attached", "netns", rec.Netns, "ip", rec.IP, "name", rec.Name, "host_veth", rec.HostVeth)
	return rec.api(), nil
}

// remoteOwner names the peer that already routes addr, if any.
func (d *Daemon) remoteOwner(addr netip.Addr) (string, bool) {
	for _, p := range d.router.Peers() {
		if p.Self {
			continue
		}
		if p.HostIP == addr {
			return p.Key.Name() + "(" + p.Nickname + ")", true
		}
		for _, a := range p.Attached {
			if a.Contains(addr) {
				return p.Key.Name() + "(" + p.Nickname + ")", true
			}
		}
	}
	return "", false
}

func (d *Daemon) detach(req api.DetachRequest) error {
	if req.Netns == "" {
		return badRequest("netns is required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i := -1
	for j, rec := range d.attachments {
		if rec.Netns == req.Netns {
			i = j
		}
	}
	if i < 0 {
		return badRequest("namespace %s is not attached", req.Netns)
	}
	rec := d.attachments[i]
	if a, err := rec.tunnel(); err == nil {
		if err := d.tun.Detach(a); err != nil {
			d.log.Warn("removing veth", "host_veth", rec.HostVeth, "err", err)
		}
	}
	d.attachments = append(d.attachments[:i], d.attachments[i+1:]...)
	if err := saveAttachments(d.cfg.StateDir, d.attachments); err != nil {
		return fmt.Errorf("recording the detachment: %w", err)
	}
	d.publishAttachedLocked()
	d.dnsRemoveAttachment(rec)
	d.log.Info("detached", "netns", rec.Netns, "ip", rec.IP)
	return nil
}
