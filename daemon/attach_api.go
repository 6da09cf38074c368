package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/attachment"
)

// cniID is the attachment id (and IPAM id) of a CNI attachment.
func cniID(containerID, ifName string) string { return "cni:" + containerID + "/" + ifName }

// attach serves weavewg attach and the CNI plugin's ADD: a namespace gets
// an interface on the bridge with an address from IPAM.
func (d *Daemon) attach(ctx context.Context, req api.AttachRequest) (api.Attachment, error) {
	if req.Netns == "" {
		return api.Attachment{}, badRequest("netns is required (a path such as /var/run/netns/NAME or /proc/PID/ns/net)")
	}
	dev, ino, err := attachment.NetnsIdentity(req.Netns)
	if err != nil {
		return api.Attachment{}, badRequest("network namespace %s: %v", req.Netns, errors.Unwrap(err))
	}
	if err := refuseHostNetns(dev, ino); err != nil {
		return api.Attachment{}, badRequest("network namespace %s: %v", req.Netns, err)
	}
	rec := attachment.Record{Netns: req.Netns, NetnsDev: dev, NetnsIno: ino, Name: req.Name, IfName: req.IfName, Egress: req.Egress}
	var subnet netip.Prefix
	if req.Net != "" {
		if subnet, err = d.subnetArg(req.Net); err != nil {
			return api.Attachment{}, err
		}
	}
	if rec.IfName == "" {
		rec.IfName = ContainerIfName
	}
	switch req.Origin {
	case "", api.OriginCLI:
		// The namespace path is the id, as before the attachment service:
		// IPAM state of earlier versions keeps matching.
		rec.ID, rec.Origin = req.Netns, attachment.OriginCLI
	case api.OriginCNI:
		if req.ContainerID == "" || req.IfName == "" {
			return api.Attachment{}, badRequest("a CNI attachment needs container_id and ifname")
		}
		rec.ID, rec.Origin, rec.ContainerID = cniID(req.ContainerID, req.IfName), attachment.OriginCNI, req.ContainerID
	default:
		return api.Attachment{}, badRequest("origin %q: attach takes cli or cni", req.Origin)
	}
	wait := api.DefaultAttachWait
	if req.WaitSeconds > 0 {
		wait = time.Duration(req.WaitSeconds * float64(time.Second))
	}

	// One interface of a given name per namespace, whoever asks and by
	// whichever path; checked as the intent is recorded, so two requests
	// at once cannot both pass.
	sameIface := func(r attachment.Record) error {
		if r.Origin != attachment.OriginDocker && r.NetnsIno == ino && r.NetnsDev == dev && r.IfName == rec.IfName {
			as := ""
			if r.Netns != req.Netns {
				as = " (as " + r.Netns + ")"
			}
			return badRequest("namespace %s is already attached%s with %s", req.Netns, as, orText(r.IP, "(being attached)"))
		}
		return nil
	}
	rec, err = d.reserve(ctx, rec, req.IP, subnet, wait, sameIface)
	if err != nil {
		return api.Attachment{}, err
	}
	p, _ := rec.Prefix()
	// The subnet's isolation (and egress) rules are in place before the
	// interface is.
	d.applyFilters()
	a, err := d.host.Attach(d.attachSpec(req.Netns, p, rec.IfName, rec.Egress))
	if err != nil {
		d.release(rec.ID)
		return api.Attachment{}, err
	}
	err = d.update(rec.ID, func(r *attachment.Record) { r.HostVeth, r.IfName, r.MTU = a.HostVeth, a.IfName, a.MTU })
	if err != nil {
		// Not recorded means not re-adopted after a restart; undo rather
		// than leave a container the daemon would forget.
		d.host.Detach(a)
		d.release(rec.ID)
		return api.Attachment{}, err
	}
	rec.HostVeth, rec.IfName, rec.MTU = a.HostVeth, a.IfName, a.MTU
	d.log.Info("attached", "id", rec.ID, "origin", rec.Origin, "ip", rec.IP, "name", rec.Name, "host_veth", rec.HostVeth)
	return apiAttachment(rec), nil
}

// detach serves weavewg detach (by namespace) and the CNI plugin's DEL (by
// container and interface; idempotent).
func (d *Daemon) detach(req api.DetachRequest) (api.Detached, error) {
	var id string
	switch req.Origin {
	case "", api.OriginCLI:
		if req.Netns == "" {
			return api.Detached{}, badRequest("netns is required")
		}
		d.mu.Lock()
		id = d.findCLINetnsLocked(req.Netns)
		d.mu.Unlock()
		if id == "" {
			return api.Detached{}, badRequest("namespace %s is not attached", req.Netns)
		}
	case api.OriginCNI:
		if req.ContainerID == "" || req.IfName == "" {
			return api.Detached{}, badRequest("a CNI detach needs container_id and ifname")
		}
		id = cniID(req.ContainerID, req.IfName)
	default:
		return api.Detached{}, badRequest("origin %q: detach takes cli or cni (Docker's containers leave through Docker)", req.Origin)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i := d.findLocked(id)
	if i < 0 {
		return api.Detached{}, nil
	}
	rec := d.attachments[i]
	if !rec.Plumbed() {
		return api.Detached{}, fmt.Errorf("%s is being attached right now; retry", id)
	}
	return api.Detached{Found: true, IP: rec.IP}, d.releaseLocked(i)
}

// findCLINetnsLocked finds the CLI attachment of the namespace at path,
// however it is spelled: by the namespace itself (device and inode) while
// the path opens one, so /run/netns/c1, /var/run/netns/c1 and
// /proc/PID/ns/net of a process in it all name the same attachment; else
// (the namespace is gone) by the path as it was given at attach.
func (d *Daemon) findCLINetnsLocked(path string) string {
	dev, ino, err := attachment.NetnsIdentity(path)
	for _, r := range d.attachments {
		if r.Origin != attachment.OriginCLI {
			continue
		}
		if err == nil && r.NetnsIno != 0 && r.NetnsDev == dev && r.NetnsIno == ino {
			return r.ID
		}
	}
	for _, r := range d.attachments {
		if r.Origin != attachment.OriginCLI {
			continue
		}
		if r.Netns == path {
			return r.ID
		}
		// Records of before version 2 have no identity: compare what
		// their path opens now.
		if err == nil && r.NetnsIno == 0 {
			if rd, ri, rerr := attachment.NetnsIdentity(r.Netns); rerr == nil && rd == dev && ri == ino {
				return r.ID
			}
		}
	}
	return ""
}

// gc releases every CNI attachment not in the runtime's valid list.
func (d *Daemon) gc(req api.GCRequest) (api.GCResult, error) {
	valid := map[string]bool{}
	for _, v := range req.Valid {
		valid[cniID(v.ContainerID, v.IfName)] = true
	}
	res := api.GCResult{Released: []api.Attachment{}}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for i := len(d.attachments) - 1; i >= 0; i-- {
		rec := d.attachments[i]
		if rec.Origin != attachment.OriginCNI || valid[rec.ID] || !rec.Plumbed() {
			continue
		}
		if err := d.releaseLocked(i); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Released = append(res.Released, apiAttachment(rec))
	}
	slices.SortFunc(res.Released, func(a, b api.Attachment) int { return strings.Compare(a.ID, b.ID) })
	return res, errors.Join(errs...)
}

// attachReady says whether an attach could get an address now (CNI
// STATUS): "" when it can, else why not.
func (d *Daemon) attachReady() string {
	st := d.ipam.Status()
	if st.Seed.IsZero() || st.WaitingForSpace {
		return d.noSpaceReason()
	}
	return ""
}

// refuseHostNetns refuses the daemon's own namespace and PID 1's: attaching
// either would put the host's own interfaces' namespace (usually the root
// one) on the bridge as a "container", moving its routes and address into
// the overlay and cutting the host off (issue 14).
func refuseHostNetns(dev, ino uint64) error {
	for _, p := range []struct{ path, what string }{
		{"/proc/self/ns/net", "the weavewg daemon's own namespace"},
		{"/proc/1/ns/net", "the namespace of PID 1 (the host's)"},
	} {
		d, i, err := attachment.NetnsIdentity(p.path)
		if err == nil && d == dev && i == ino {
			return fmt.Errorf("it is %s; attach a container's namespace", p.what)
		}
	}
	return nil
}
