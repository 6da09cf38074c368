package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/ipam"
	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/atomicfile"
	"github.com/weavewg/weavewg/types/key"
)

// ErrAlreadyMember is returned by Join when the state dir already belongs to
// the token's network: the host just starts.
var ErrAlreadyMember = errors.New("this host is already a member of the token's network")

// Admission is what a successful join hands to Run.
type Admission struct {
	Result discovery.JoinResult
	Peers  []string // the token's members, HOST:PORT
}

// Join asks the members named in token to admit this host. It writes
// nothing to the state dir unless admitted (then only the identity key,
// which the admission was made for); Run records the network.
func Join(ctx context.Context, stateDir, token, nickname string, timeout time.Duration, progress func(string)) (*Admission, error) {
	if progress == nil {
		progress = func(string) {}
	}
	tok, err := discovery.ParseToken(token)
	if err != nil {
		return nil, err
	}
	if n, err := loadNetwork(stateDir); err != nil {
		return nil, err
	} else if n != nil {
		s, _ := n.secret()
		if discovery.IDOf(s) == tok.Network {
			return nil, ErrAlreadyMember
		}
		return nil, fmt.Errorf("this host is already in network %s (state dir %s), not the token's %s; run 'weavewg reset' to leave it first",
			discovery.IDOf(s), stateDir, tok.Network)
	}
	priv, fresh, err := peekKey(stateDir)
	if err != nil {
		return nil, err
	}
	res, err := discovery.Join(ctx, discovery.JoinConfig{
		Private:  priv,
		Token:    tok,
		Nickname: nickname,
		Timeout:  timeout,
		Progress: progress,
	})
	if err != nil {
		return nil, err
	}
	if fresh {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return nil, err
		}
		if err := atomicfile.Write(filepath.Join(stateDir, keyFile), []byte(priv.String()+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("saving identity key: %w", err)
		}
	}
	progress(fmt.Sprintf("admitted by %s into network %s as %s", res.By.Key.Name(), tok.Network, priv.Public().Name()))
	a := &Admission{Result: res}
	for _, e := range tok.Endpoints {
		a.Peers = append(a.Peers, e.Addr.String())
	}
	return a, nil
}

// peekKey returns the identity in dir, or a new one not yet saved.
func peekKey(dir string) (key.Private, bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, keyFile))
	if errors.Is(err, os.ErrNotExist) {
		k, err := key.NewPrivate()
		return k, true, err
	}
	if err != nil {
		return key.Private{}, false, err
	}
	k, err := key.ParsePrivate(strings.TrimSpace(string(b)))
	if err != nil {
		return key.Private{}, false, fmt.Errorf("identity key in %s is corrupt: %w", dir, err)
	}
	return k, false, nil
}

func (d *Daemon) notify(format string, args ...any) {
	if d.cfg.Notify != nil {
		d.cfg.Notify(fmt.Sprintf(format, args...))
	}
}

// announce tells the person at the terminal how others join a network this
// start created. The token it prints admits one host within an hour: a
// token hands out the network secret, so the one printed unasked is as
// small as it can be, and goes to the terminal only (under systemd,
// standard output is the journal); 'weavewg token create' makes others.
func (d *Daemon) announce() {
	if !d.createdNetwork {
		return
	}
	if d.cfg.Terminal == nil {
		d.notify("created network %s with range %s; make a join token for each host with 'weavewg token create' (none is printed: standard output is not a terminal, and a token must not end up in a log)",
			discovery.IDOf(d.secret), d.cfg.Range)
		return
	}
	tok, err := d.createToken(api.TokenRequest{TTL: firstTokenTTL.String(), Uses: 1})
	if err != nil {
		d.notify("created network %s; make a join token with 'weavewg token create --endpoint IP' (%v)", discovery.IDOf(d.secret), err)
		return
	}
	d.log.Info("created a new network", "network", tok.Network, "token_id", tok.ID)
	until := "never expires"
	if tok.Expires != nil {
		until = "valid until " + tok.Expires.Local().Format(time.RFC1123)
	}
	d.cfg.Terminal(fmt.Sprintf("created network %s with range %s. One other host joins it with (%s, once; 'weavewg token create' makes more):\n\n    weavewg join %s\n",
		tok.Network, d.cfg.Range, until, tok.Token))
}

// firstTokenTTL is how long the token printed at creation is valid.
const firstTokenTTL = time.Hour

// reset leaves the network: releases every attachment, hands the address
// space to a reachable peer, and stops the daemon, which then forgets the
// network (see forget).
func (d *Daemon) reset() (api.ResetResult, error) {
	res := api.ResetResult{Network: discovery.IDOf(d.secret).String()}
	// From here the host is leaving: the reconcile loop must not take a
	// host address (and ask for address space) again once it is released.
	d.forgetOnStop.Store(true)
	d.mu.Lock()
	for len(d.attachments) > 0 {
		if err := d.releaseLocked(len(d.attachments) - 1); err != nil {
			d.log.Warn("reset: releasing an attachment", "err", err)
			d.attachments = d.attachments[:len(d.attachments)-1]
		}
	}
	d.mu.Unlock()
	heir, err := d.leaveIPAM()
	switch {
	case err == nil:
		res.Heir = d.describe(heir)
		// Give the ring update time to leave before the connections close.
		time.Sleep(time.Second)
	default:
		res.Detail = fmt.Sprintf("address space not handed over (%v); run 'weavewg rmpeer %s' on a member", err, d.pub.Name())
	}
	d.log.Warn("leaving the network", "network", res.Network, "heir", res.Heir)
	if d.stop != nil {
		d.stop()
	}
	return res, nil
}

// leaveIPAM releases the host's own addresses (its overlay address, those
// exposed in isolated subnets: IPAM allocations too, which leave with it)
// and hands the address space over. A reconcile pass already running may
// record the host address again in between; then it tries again.
func (d *Daemon) leaveIPAM() (key.Public, error) {
	for try := 0; ; try++ {
		for _, a := range d.ipam.Allocations() {
			if a.ID == hostID || strings.HasPrefix(a.ID, exposeIDPrefix) {
				if err := d.ipam.FreeAddr(a.Addr); err != nil {
					d.log.Warn("reset: releasing a host address", "addr", a.Addr, "err", err)
				}
			}
		}
		heir, err := d.ipam.Leave()
		if !errors.Is(err, ipam.ErrStillAllocated) || try == 2 {
			return heir, err
		}
	}
}

// forget removes the network's state after the parts are closed. The
// identity key stays: it is the host's, not the network's.
func (d *Daemon) forget() {
	for _, f := range []string{networkFile, secretsFile, tokensFile, evictionsFile, ipamFile, attachmentsFile, hostFile} {
		if err := os.Remove(filepath.Join(d.cfg.StateDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Error("forgetting the network", "file", f, "err", err)
		}
	}
}
