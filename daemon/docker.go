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
	"sync"
	"time"

	"github.com/weavewg/weavewg/docker"
	"github.com/weavewg/weavewg/types/api"
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
}

// dockerHost is the daemon as the plugin sees it.
type dockerHost struct {
	d *Daemon
}

var _ docker.Host = dockerHost{}

func (h dockerHost) AllocateAddress(ctx context.Context, id string, want netip.Addr) (netip.Prefix, error) {
	req := api.AttachRequest{Netns: id}
	if want.IsValid() {
		req.IP = netip.PrefixFrom(want, h.d.cfg.Range.Bits()).String()
	}
	return h.d.allocate(ctx, req)
}

func (h dockerHost) FreeAddress(id string) error {
	_, err := h.d.ipam.Free(id)
	return err
}

func (h dockerHost) CreateVeth(hostName, peerName string) (net.HardwareAddr, error) {
	return h.d.host.CreateVeth(hostName, peerName)
}

func (h dockerHost) AdoptVeth(hostName string) error  { return h.d.host.AdoptVeth(hostName) }
func (h dockerHost) DeleteVeth(hostName string) error { return h.d.host.DeleteVeth(hostName) }

func (h dockerHost) AddName(name string, addr netip.Addr, origin string) error {
	if h.d.dns == nil {
		return nil
	}
	return h.d.dns.AddEntry(name, addr, origin)
}

func (h dockerHost) RemoveNames(origin string) {
	if h.d.dns != nil {
		h.d.dns.RemoveEntries("", netip.Addr{}, origin)
	}
}

func (h dockerHost) HostIP() netip.Prefix { return h.d.hostIP }
func (h dockerHost) Range() netip.Prefix  { return h.d.cfg.Range }

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
		Logger:       log,
	})
	if err != nil {
		log.Error("Docker plugin disabled", "err", err)
		return func() {}
	}
	p.Restore(context.Background())
	ln, err := p.Listen(dc.PluginSocket)
	if err != nil {
		log.Error("Docker plugin disabled", "socket", dc.PluginSocket, "err", err)
		p.Close()
		return func() {}
	}
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
		os.Remove(dc.PluginSocket)
		wg.Wait()
		p.Close()
	}
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
