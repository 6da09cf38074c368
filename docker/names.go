package docker

import (
	"context"

	"github.com/weavewg/weavewg/types/attachment"
)

// Container names: Docker does not tell a network driver which container
// an endpoint is for, so after Join the plugin asks the engine and records
// the name on the attachment, which registers it in weave.local.

// startLookupLocked asks Docker, in the background, which container owns
// the endpoint, and registers its name.
func (p *Plugin) startLookupLocked(id string, ep attachment.Record) {
	if p.docker == nil || p.closed {
		return
	}
	p.stopLookupLocked(id)
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.NameTimeout)
	p.lookup[id] = cancel
	p.wg.Go(func() {
		defer cancel()
		name, cid, err := p.docker.EndpointContainer(ctx, ep.Network, id)
		p.mu.Lock()
		defer p.mu.Unlock()
		if ctx.Err() == context.Canceled {
			return // left or deleted meanwhile
		}
		delete(p.lookup, id)
		if err != nil {
			p.log.Warn("no container name for endpoint", "endpoint", short(id), "err", err)
			return
		}
		cur, ok := p.endpointLocked(id)
		if !ok || !cur.Joined {
			return
		}
		// Recording the name registers it in weave.local.
		if err := p.host.Update(cur.ID, func(a *attachment.Record) { a.Name, a.ContainerID = name, cid }); err != nil {
			p.log.Warn("container name not recorded", "name", name, "err", err)
			return
		}
		p.log.Info("container name registered", "name", name, "ip", cur.IP)
	})
}

func (p *Plugin) stopLookupLocked(id string) {
	if cancel, ok := p.lookup[id]; ok {
		cancel()
		delete(p.lookup, id)
	}
}
