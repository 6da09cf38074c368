package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/types/api"
)

// errBadRequest marks errors caused by the request rather than the host; the
// API answers them with 400 instead of 500.
var errBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, args...))
}

// adoptAttachments puts the namespaces attached before a restart back on the
// bridge and re-claims their addresses. One whose namespace is gone is
// dropped from the record and its address released: its container stopped.
func (d *Daemon) adoptAttachments() {
	d.mu.Lock()
	defer d.mu.Unlock()
	kept := d.attachments[:0]
	for _, rec := range d.attachments {
		a, err := rec.attached()
		if err == nil {
			err = d.host.Adopt(a)
		}
		if err != nil {
			d.log.Warn("dropping an attachment that is gone", "netns", rec.Netns, "ip", rec.IP, "err", err)
			d.ipam.Free(rec.Netns)
			continue
		}
		d.claimLocked(rec)
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

func (rec attachmentRecord) attached() (hostnet.Attached, error) {
	ip, err := netip.ParsePrefix(rec.IP)
	if err != nil {
		return hostnet.Attached{}, err
	}
	return hostnet.Attached{Netns: rec.Netns, IP: ip, IfName: rec.IfName, HostVeth: rec.HostVeth, MTU: rec.MTU}, nil
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

func (d *Daemon) attach(ctx context.Context, req api.AttachRequest) (api.Attachment, error) {
	if req.Netns == "" {
		return api.Attachment{}, badRequest("netns is required (a path such as /var/run/netns/NAME or /proc/PID/ns/net)")
	}
	if _, err := os.Stat(req.Netns); err != nil {
		return api.Attachment{}, badRequest("network namespace %s: %v", req.Netns, errors.Unwrap(err))
	}
	// Reserve the namespace so a concurrent attach of it cannot allocate
	// the same (idempotent) address and then free it on failure.
	d.mu.Lock()
	for _, rec := range d.attachments {
		if rec.Netns == req.Netns {
			d.mu.Unlock()
			return api.Attachment{}, badRequest("namespace %s is already attached with %s", req.Netns, rec.IP)
		}
	}
	if d.pending[req.Netns] {
		d.mu.Unlock()
		return api.Attachment{}, badRequest("namespace %s is being attached by another request", req.Netns)
	}
	d.pending[req.Netns] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.pending, req.Netns)
		d.mu.Unlock()
	}()

	// Waiting for address space happens without the lock.
	ip, err := d.allocate(ctx, req)
	if err != nil {
		return api.Attachment{}, err
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	a, err := d.host.Attach(hostnet.AttachSpec{Netns: req.Netns, IP: ip, IfName: ContainerIfName})
	if err != nil {
		d.ipam.Free(req.Netns)
		return api.Attachment{}, err
	}
	rec := attachmentRecord{Netns: req.Netns, IP: ip.String(), Name: req.Name, IfName: a.IfName, HostVeth: a.HostVeth, MTU: a.MTU}
	d.attachments = append(d.attachments, rec)
	if err := saveAttachments(d.cfg.StateDir, d.attachments); err != nil {
		// Not recorded means not re-adopted after a restart; undo rather
		// than leave a container the daemon would forget.
		d.attachments = d.attachments[:len(d.attachments)-1]
		d.host.Detach(a)
		d.ipam.Free(req.Netns)
		return api.Attachment{}, fmt.Errorf("recording the attachment: %w", err)
	}
	d.publishAttachedLocked()
	d.dnsAddAttachment(rec)
	d.log.Info("attached", "netns", rec.Netns, "ip", rec.IP, "name", rec.Name, "host_veth", rec.HostVeth)
	return rec.api(), nil
}

func (d *Daemon) detach(req api.DetachRequest) error {
	if req.Netns == "" {
		return badRequest("netns is required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, rec := range d.attachments {
		if rec.Netns == req.Netns {
			return d.detachLocked(i)
		}
	}
	return badRequest("namespace %s is not attached", req.Netns)
}

// detachLocked removes attachment i: veth, address, name, record.
func (d *Daemon) detachLocked(i int) error {
	rec := d.attachments[i]
	if a, err := rec.attached(); err == nil {
		if err := d.host.Detach(a); err != nil {
			d.log.Warn("removing veth", "host_veth", rec.HostVeth, "err", err)
		}
	}
	d.attachments = slices.Delete(d.attachments, i, i+1)
	delete(d.missing, rec.Netns)
	if err := saveAttachments(d.cfg.StateDir, d.attachments); err != nil {
		return fmt.Errorf("recording the detachment: %w", err)
	}
	// Released only once the record is gone, so a crash in between can
	// never leave an address both free and in use.
	if _, err := d.ipam.Free(rec.Netns); err != nil {
		d.log.Warn("releasing address", "ip", rec.IP, "err", err)
	}
	d.publishAttachedLocked()
	d.dnsRemoveAttachment(rec)
	d.log.Info("detached", "netns", rec.Netns, "ip", rec.IP)
	return nil
}

// releaseVanished detaches attachments whose namespace has been gone for
// vanishedGrace: the container stopped without a detach.
func (d *Daemon) releaseVanished(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.attachments) - 1; i >= 0; i-- {
		rec := d.attachments[i]
		if _, err := os.Stat(rec.Netns); err == nil {
			delete(d.missing, rec.Netns)
			continue
		}
		since, ok := d.missing[rec.Netns]
		if !ok {
			d.missing[rec.Netns] = now
			continue
		}
		if now.Sub(since) >= vanishedGrace {
			d.log.Info("releasing the address of a namespace that is gone", "netns", rec.Netns, "ip", rec.IP)
			d.detachLocked(i)
		}
	}
}

// ps lists the attachments here.
func (d *Daemon) ps() []api.Attachment {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []api.Attachment{}
	self := d.pub.Name() + "(" + d.cfg.Nickname + ")"
	for _, rec := range d.attachments {
		a := rec.api()
		a.Peer = self
		out = append(out, a)
	}
	return out
}
