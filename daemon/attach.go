package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/weavewg/weavewg/hostnet"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/attachment"
)

// The attachment service: one registry of every interface this host put on
// the overlay, whoever asked (the CLI, the Docker plugin, a CNI runtime).
// It owns the attachments file, the published (gossiped) addresses, and the
// names registered in DNS for attachments. Its records are d.attachments,
// guarded by d.mu; every change is written to the file before it is acted
// on, in this order:
//
//	reserve: record the intent (no address) → allocate → record the address
//	plumb:   make the veth → record it (update)
//	release: remove the veth → remove the record → free the address
//
// so a crash at any point leaves either a record the next start completes
// or undoes, or an address the IPAM id of no record holds, which the next
// start cannot see; the intent record closes that gap (adoptAttachments
// frees the id of an intent it finds).

// errBadRequest marks errors caused by the request rather than the host; the
// API answers them with 400 instead of 500.
var errBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, args...))
}

func (d *Daemon) attachmentsPath() string { return filepath.Join(d.cfg.StateDir, attachmentsFile) }

func (d *Daemon) saveAttachmentsLocked() error {
	return attachment.Save(d.attachmentsPath(), d.attachments)
}

func (d *Daemon) findLocked(id string) int {
	return slices.IndexFunc(d.attachments, func(r attachment.Record) bool { return r.ID == id })
}

// reserve records rec (its ID and Origin set, IP empty) and allocates its
// address: ipReq if given, else the next free one, waiting up to wait for
// address space while this peer joins. refuse, if not nil, is asked about
// every existing record as the intent is recorded and vetoes it with an
// error. The record with its address is returned; on error nothing stays
// allocated or recorded.
func (d *Daemon) reserve(ctx context.Context, rec attachment.Record, ipReq string, subnet netip.Prefix, wait time.Duration, refuse func(attachment.Record) error) (attachment.Record, error) {
	rec.IP = ""
	d.mu.Lock()
	for _, r := range d.attachments {
		if refuse == nil {
			break
		}
		if err := refuse(r); err != nil {
			d.mu.Unlock()
			return attachment.Record{}, err
		}
	}
	if i := d.findLocked(rec.ID); i >= 0 {
		d.mu.Unlock()
		return attachment.Record{}, badRequest("%s is attached already (%s)", rec.ID, orText(d.attachments[i].IP, "being attached"))
	}
	d.attachments = append(d.attachments, rec)
	if err := d.saveAttachmentsLocked(); err != nil {
		d.attachments = d.attachments[:len(d.attachments)-1]
		d.mu.Unlock()
		return attachment.Record{}, fmt.Errorf("recording the attachment: %w", err)
	}
	d.mu.Unlock()

	// Waiting for address space happens without the lock.
	ip, err := d.allocate(ctx, rec.ID, ipReq, subnet, wait)
	d.mu.Lock()
	defer d.mu.Unlock()
	i := d.findLocked(rec.ID)
	if err == nil && i < 0 {
		err = errors.New("the attachment was removed while its address was allocated")
	}
	if err == nil {
		d.attachments[i].IP = ip.String()
		if err = d.saveAttachmentsLocked(); err == nil {
			return d.attachments[i], nil
		}
		err = fmt.Errorf("recording the attachment: %w", err)
	}
	if i >= 0 {
		d.attachments = slices.Delete(d.attachments, i, i+1)
		if serr := d.saveAttachmentsLocked(); serr != nil {
			d.log.Error("saving attachments", "err", serr)
		}
	}
	d.ipam.Free(rec.ID)
	return attachment.Record{}, err
}

// update changes the record id with f and records the change; the published
// addresses and DNS names follow.
func (d *Daemon) update(id string, f func(*attachment.Record)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := d.findLocked(id)
	if i < 0 {
		return fmt.Errorf("no attachment %s", id)
	}
	old := d.attachments[i]
	f(&d.attachments[i])
	d.attachments[i].ID, d.attachments[i].Origin, d.attachments[i].IP = old.ID, old.Origin, old.IP
	if err := d.saveAttachmentsLocked(); err != nil {
		d.attachments[i] = old
		return fmt.Errorf("recording the attachment: %w", err)
	}
	d.changedLocked(old, d.attachments[i])
	return nil
}

// changedLocked makes the mesh and DNS follow a record's change.
func (d *Daemon) changedLocked(old, cur attachment.Record) {
	if old.Plumbed() != cur.Plumbed() || old.IP != cur.IP {
		d.publishAttachedLocked()
	}
	if old.Plumbed() != cur.Plumbed() || old.Name != cur.Name || old.IP != cur.IP {
		d.dnsRemoveAttachment(old)
		d.dnsAddAttachment(cur)
	}
}

// release removes attachment id: its veth, its record, then its address
// and name. An id that is not recorded is released already (false).
func (d *Daemon) release(id string) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := d.findLocked(id)
	if i < 0 {
		return false, nil
	}
	return true, d.releaseLocked(i)
}

func (d *Daemon) releaseLocked(i int) error {
	rec := d.attachments[i]
	if rec.HostVeth != "" {
		if err := d.host.Detach(hostAttached(rec)); err != nil {
			d.log.Warn("removing veth", "host_veth", rec.HostVeth, "err", err)
		}
	}
	d.attachments = slices.Delete(d.attachments, i, i+1)
	delete(d.missing, rec.ID)
	if err := d.saveAttachmentsLocked(); err != nil {
		d.attachments = slices.Insert(d.attachments, i, rec)
		return fmt.Errorf("recording the detachment: %w", err)
	}
	// Released only once the record is gone, so a crash in between can
	// never leave an address both free and in use.
	if _, err := d.ipam.Free(rec.ID); err != nil {
		d.log.Warn("releasing address", "ip", rec.IP, "err", err)
	}
	d.changedLocked(rec, attachment.Record{})
	d.log.Info("detached", "id", rec.ID, "origin", rec.Origin, "ip", rec.IP)
	return nil
}

// records returns a copy of the records of origin ("" for all).
func (d *Daemon) records(origin string) []attachment.Record {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []attachment.Record
	for _, r := range d.attachments {
		if origin == "" || r.Origin == origin {
			out = append(out, r)
		}
	}
	return out
}

// adoptAttachments runs once at start: records interrupted by a crash are
// undone, the others re-claim their addresses (before anything new is
// allocated, so a restart never hands them out) and their veths go back on
// the bridge. A CLI or CNI attachment whose namespace is gone is dropped:
// its container stopped. Docker's stay until Docker releases them.
func (d *Daemon) adoptAttachments() {
	d.mu.Lock()
	defer d.mu.Unlock()
	kept := d.attachments[:0]
	for _, rec := range d.attachments {
		p, hasIP := rec.Prefix()
		if !hasIP {
			d.log.Warn("undoing an attachment interrupted before its address was recorded", "id", rec.ID)
			d.ipam.Free(rec.ID)
			continue
		}
		if rec.Origin == attachment.OriginDocker {
			if err := d.ipam.ClaimAfterRestart(p.Addr(), rec.ID); err != nil {
				d.log.Warn("could not re-claim a Docker address", "ip", rec.IP, "err", err)
			}
			if rec.HostVeth != "" {
				if err := d.host.AdoptVeth(rec.HostVeth); err != nil {
					// Its container is gone or going; Docker's Leave and
					// DeleteEndpoint will clean up.
					d.log.Warn("Docker endpoint veth not re-adopted", "endpoint", rec.Endpoint, "host_veth", rec.HostVeth, "err", err)
				}
			}
			kept = append(kept, rec)
			d.dnsAddAttachment(rec)
			continue
		}
		if rec.HostVeth == "" {
			// Crashed between allocating and recording the veth: the
			// veth may exist under its deterministic name.
			d.log.Warn("undoing an attachment interrupted before its interface was recorded", "id", rec.ID, "ip", rec.IP)
			d.host.Detach(hostnet.Attached{Netns: rec.Netns, HostVeth: hostnet.HostVethName(rec.Netns, orText(rec.IfName, ContainerIfName))})
			d.ipam.Free(rec.ID)
			continue
		}
		err := d.host.Adopt(hostAttached(rec))
		if err == nil && rec.NetnsIno != 0 && !rec.SameNetns() {
			err = errors.New("another namespace is at its path now")
		}
		if err != nil {
			d.log.Warn("dropping an attachment that is gone", "id", rec.ID, "netns", rec.Netns, "ip", rec.IP, "err", err)
			d.host.Detach(hostAttached(rec))
			d.ipam.Free(rec.ID)
			continue
		}
		if err := d.ipam.ClaimAfterRestart(p.Addr(), rec.ID); err != nil {
			d.log.Warn("could not re-claim an attachment's address", "id", rec.ID, "ip", rec.IP, "err", err)
		}
		d.log.Info("re-adopted attachment", "id", rec.ID, "origin", rec.Origin, "ip", rec.IP)
		kept = append(kept, rec)
		d.dnsAddAttachment(rec)
	}
	d.attachments = kept
	if err := d.saveAttachmentsLocked(); err != nil {
		d.log.Error("saving attachments", "err", err)
	}
	d.publishAttachedLocked()
}

func hostAttached(rec attachment.Record) hostnet.Attached {
	p, _ := rec.Prefix()
	return hostnet.Attached{Netns: rec.Netns, IP: p, IfName: rec.IfName, HostVeth: rec.HostVeth, MTU: rec.MTU}
}

func apiAttachment(rec attachment.Record) api.Attachment {
	return api.Attachment{
		ID: rec.ID, Origin: rec.Origin, ContainerID: rec.ContainerID,
		Netns: rec.Netns, IP: rec.IP, Name: rec.Name, Interface: rec.IfName, HostVeth: rec.HostVeth, MTU: rec.MTU,
	}
}

// publishAttachedLocked tells the mesh which addresses live here.
func (d *Daemon) publishAttachedLocked() {
	var ps []netip.Prefix
	for _, rec := range d.attachments {
		if p, ok := rec.Prefix(); ok && rec.Plumbed() {
			ps = append(ps, netip.PrefixFrom(p.Addr(), 32))
		}
	}
	d.router.SetAttached(ps)
}

// releaseVanished detaches CLI and CNI attachments whose namespace has been
// gone (or replaced by another at its path) for vanishedGrace: the
// container stopped without a detach.
func (d *Daemon) releaseVanished(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.attachments) - 1; i >= 0; i-- {
		rec := d.attachments[i]
		if rec.Origin == attachment.OriginDocker || !rec.Plumbed() {
			continue
		}
		if rec.SameNetns() {
			delete(d.missing, rec.ID)
			continue
		}
		if _, _, err := attachment.NetnsIdentity(rec.Netns); errors.Is(err, fs.ErrNotExist) && rec.NetnsIno != 0 && !netnsHeld(rec.NetnsDev, rec.NetnsIno) {
			// Its path is gone and no process is in it: the namespace
			// is dead, even if the kernel has not deleted its veth yet
			// (hostVethDeleted), which under load can take seconds.
			d.log.Info("releasing the address of a namespace that was deleted", "id", rec.ID, "netns", rec.Netns, "ip", rec.IP)
			d.releaseLocked(i)
			continue
		}
		since, ok := d.missing[rec.ID]
		if !ok {
			d.missing[rec.ID] = now
			continue
		}
		if now.Sub(since) >= vanishedGrace {
			d.log.Info("releasing the address of a namespace that is gone", "id", rec.ID, "netns", rec.Netns, "ip", rec.IP)
			d.releaseLocked(i)
		}
	}
}

// linkWatcher is what the daemon uses of hostnet.Host to learn of deleted
// links as they go.
type linkWatcher interface {
	WatchDeletedLinks(stop <-chan struct{}, deleted func(name string))
}

// hostVethDeleted releases the CLI or CNI attachment whose host veth was
// just deleted: the kernel deletes it with its namespace, so the container
// is gone (or someone removed its interface; either way it is off the
// overlay). Its address is freed and its name withdrawn at once, not after
// releaseVanished's grace. Docker's endpoints end through Docker.
func (d *Daemon) hostVethDeleted(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, rec := range d.attachments {
		if rec.HostVeth != name || rec.Origin == attachment.OriginDocker || !rec.Plumbed() {
			continue
		}
		d.log.Info("releasing the address of an attachment whose interface is gone (its namespace was deleted)", "id", rec.ID, "netns", rec.Netns, "ip", rec.IP, "host_veth", name)
		if err := d.releaseLocked(i); err != nil {
			d.log.Warn("releasing an attachment whose interface is gone", "id", rec.ID, "err", err)
		}
		return
	}
}

// netnsHeld reports whether a process is in the namespace dev/ino (or
// holds it open as its network namespace). A namespace also lives while a
// bind mount or an open file holds it; those are not seen here, and the
// veth watch and the grace cover them.
func netnsHeld(dev, ino uint64) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true // cannot tell: assume held
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if d, i, err := attachment.NetnsIdentity("/proc/" + e.Name() + "/ns/net"); err == nil && d == dev && i == ino {
			return true
		}
	}
	return false
}

// ps lists the attachments here, of every origin.
func (d *Daemon) ps() []api.Attachment {
	out := []api.Attachment{}
	self := d.pub.Name() + "(" + d.cfg.Nickname + ")"
	for _, rec := range d.records("") {
		if _, ok := rec.Prefix(); !ok {
			continue
		}
		a := apiAttachment(rec)
		a.Peer = self
		out = append(out, a)
	}
	return out
}

func orText(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
