package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/weavewg/weavewg/docker"
	"github.com/weavewg/weavewg/types/attachment"
)

// Defaults of the Docker integration.
const (
	DefaultDockerPluginSocket = "/run/docker/plugins/weavewg.sock"
	DefaultDockerSocket       = "/var/run/docker.sock"
	DockerNetworkName         = "weavewg"
	dockerStateFile           = "docker.json"
	// dockerNetworkWait bounds how long launch keeps trying to create the
	// weavewg network while Docker starts.
	dockerNetworkWait = 60 * time.Second
)

// DockerConfig configures the Docker plugin.
type DockerConfig struct {
	// PluginSocket is where the plugin is served; "" disables it.
	PluginSocket string
	// Socket is the Docker API socket; "" means DefaultDockerSocket.
	Socket string
	// NoNetwork skips creating the Docker network named weavewg.
	NoNetwork bool
	// AddressWait bounds how long a container's address waits for address
	// space while this peer joins; 0 means api.DefaultAttachWait.
	AddressWait time.Duration
}

// dockerHost is the daemon as the plugin sees it.
type dockerHost struct {
	d *Daemon
}

var _ docker.Host = dockerHost{}

func (h dockerHost) Reserve(ctx context.Context, id string, want netip.Addr, subnet netip.Prefix) (netip.Prefix, error) {
	ipReq := ""
	if want.IsValid() {
		ipReq = want.String()
	}
	// ctx carries Docker's own bound on the wait.
	rec, err := h.d.reserve(ctx, attachment.Record{ID: id, Origin: attachment.OriginDocker}, ipReq, subnet, time.Hour, nil)
	if err != nil {
		return netip.Prefix{}, err
	}
	p, _ := rec.Prefix()
	return p, nil
}

func (h dockerHost) Release(id string) error {
	_, err := h.d.release(id)
	return err
}

func (h dockerHost) Update(id string, f func(*attachment.Record)) error { return h.d.update(id, f) }

func (h dockerHost) Attachments() []attachment.Record {
	return h.d.records(attachment.OriginDocker)
}

func (h dockerHost) CreateVeth(hostName, peerName string) (net.HardwareAddr, error) {
	return h.d.host.CreateVeth(hostName, peerName)
}

func (h dockerHost) DeleteVeth(hostName string) error { return h.d.host.DeleteVeth(hostName) }

func (h dockerHost) HostIP() netip.Prefix { return h.d.hostPrefix() }

func (h dockerHost) CheckSubnet(p netip.Prefix) error {
	if p != p.Masked() {
		return fmt.Errorf("subnet %s has host bits set", p)
	}
	if err := h.d.checkSubnet(p); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), errBadRequest.Error()+": "))
	}
	return nil
}
func (h dockerHost) Range() netip.Prefix { return h.d.cfg.Range }

// startDocker serves the plugin socket, re-adopts the endpoints of
// containers that ran across a restart and, when Docker answers, creates
// the weavewg network in the background. The returned func stops it all and
// removes the socket (a stale one makes Docker hang). Failing to serve the
// plugin is logged, never fatal: weavewg works without Docker.
func (d *Daemon) startDocker() (stop func()) {
	dc := d.cfg.Docker
	if dc.PluginSocket == "" {
		return func() {}
	}
	if dc.Socket == "" {
		dc.Socket = DefaultDockerSocket
	}
	log := d.log.With("part", "docker")
	p, err := docker.New(docker.Config{
		Host:         dockerHost{d: d},
		StateFile:    filepath.Join(d.cfg.StateDir, dockerStateFile),
		DockerSocket: dc.Socket,
		AddressWait:  dc.AddressWait,
		Logger:       log,
	})
	if err != nil {
		log.Error("Docker plugin disabled", "err", err)
		return func() {}
	}
	p.Restore(context.Background())
	// A previous run's guard answers on the socket: stop it first.
	if err := docker.StopGuard(dc.PluginSocket); err != nil {
		log.Warn("stopping the previous plugin guard", "err", err)
	}
	ln, err := p.Listen(dc.PluginSocket)
	if err != nil {
		log.Error("Docker plugin disabled", "socket", dc.PluginSocket, "err", err)
		p.Close()
		return func() {}
	}
	guard := d.startPluginGuard(dc.PluginSocket, dc.Socket, ln)
	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("Docker plugin socket", "err", err)
		}
	})
	log.Info("serving the Docker plugin", "socket", dc.PluginSocket)

	ctx, cancel := context.WithCancel(context.Background())
	if !dc.NoNetwork {
		wg.Go(func() { d.ensureDockerNetwork(ctx, docker.NewClient(dc.Socket), dc.Socket) })
	}
	return func() {
		cancel()
		shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
		defer done()
		srv.Shutdown(shutCtx)
		if guard != nil {
			// The guard answers from now on (docker/guard.go).
			guard.Close()
		} else {
			// A stale socket makes Docker retry each call for 15 s.
			os.Remove(dc.PluginSocket)
		}
		wg.Wait()
		p.Close()
	}
}

// startPluginGuard starts the process that answers on the plugin socket
// once this daemon is gone (docker/guard.go). It returns the pipe to keep
// open while the daemon serves, or nil (logged) if there is no guard: the
// socket is then removed on stop, as before.
//
// A host without Docker (no API socket) gets none: nobody would call it,
// and no process should outlive the daemon for nothing.
func (d *Daemon) startPluginGuard(path, dockerSocket string, ln net.Listener) *os.File {
	log := d.log.With("part", "docker")
	if _, err := os.Stat(dockerSocket); err != nil {
		log.Debug("no Docker here; no plugin guard", "docker_socket", dockerSocket)
		return nil
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		log.Warn("no plugin guard: Docker will wait 15 s per call while the daemon is down", "err", err)
		return nil
	}
	ul.SetUnlinkOnClose(false)
	w, err := docker.StartGuard(exe, path, ul)
	if err != nil {
		ul.SetUnlinkOnClose(true)
		log.Warn("no plugin guard: Docker will wait 15 s per call while the daemon is down", "err", err)
		return nil
	}
	d.pluginGuard = w
	return w
}

// ensureDockerNetwork creates the weavewg network when Docker is present,
// retrying while Docker starts; without Docker it does nothing.
func (d *Daemon) ensureDockerNetwork(ctx context.Context, c *docker.Client, socket string) {
	log := d.log.With("part", "docker")
	if _, err := os.Stat(socket); err != nil {
		log.Info("no Docker here; not creating the weavewg network", "docker_socket", socket)
		return
	}
	deadline := time.Now().Add(dockerNetworkWait)
	for {
		created, err := c.EnsureNetwork(ctx, DockerNetworkName, DockerNetworkName, d.cfg.Range.String())
		if err == nil {
			if created {
				log.Info("created the Docker network", "network", DockerNetworkName, "subnet", d.cfg.Range.String())
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		if time.Now().After(deadline) {
			log.Warn("could not create the Docker network", "network", DockerNetworkName, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// DNSArgs are the docker run flags that make a container use this host's
// weavewg DNS: the host's overlay address and the domain to search.
func DNSArgs(hostIP, domain string) ([]string, error) {
	p, err := netip.ParsePrefix(hostIP)
	if err != nil {
		return nil, fmt.Errorf("host address %q: %v", hostIP, err)
	}
	if domain == "" {
		domain = "weave.local"
	}
	if domain[len(domain)-1] == '.' {
		domain = domain[:len(domain)-1]
	}
	return []string{"--dns=" + p.Addr().String(), "--dns-search=" + domain}, nil
}
