package docker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/weavewg/weavewg/types/unixhttp"
)

// Client is the little of the Docker Engine API weavewg uses, on a unix
// socket. Paths are unversioned: the engine answers them with its own API
// version, and the fields read here are in every version since 1.21.
type Client struct {
	c *unixhttp.Client
}

// NewClient talks to the Docker engine at the unix socket path.
func NewClient(socket string) *Client {
	// Network creation calls back into the plugin, which may wait for
	// address space.
	return &Client{c: unixhttp.NewClient(socket, 60*time.Second)}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	err := c.c.Do(ctx, method, path, in, out)
	var se *unixhttp.StatusError
	if errors.As(err, &se) {
		return fmt.Errorf("docker: HTTP %d: %w", se.Status, se)
	}
	return err
}

// Ping reports whether the engine answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/_ping", nil, nil)
}

type networkInspect struct {
	ID         string
	Name       string
	Driver     string
	Containers map[string]struct {
		Name       string
		EndpointID string
	}
}

// EndpointContainer finds the container that owns an endpoint of a network:
// its name (without the leading slash) and ID. Docker lists the container
// only once its Join is done, so this polls until ctx ends.
func (c *Client) EndpointContainer(ctx context.Context, networkID, endpointID string) (name, containerID string, err error) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		var n networkInspect
		err = c.do(ctx, http.MethodGet, "/networks/"+url.PathEscape(networkID), nil, &n)
		if err == nil {
			for cid, ctr := range n.Containers {
				if ctr.EndpointID == endpointID {
					return strings.TrimPrefix(ctr.Name, "/"), cid, nil
				}
			}
			err = errors.New("not listed on the network yet")
		}
		select {
		case <-ctx.Done():
			return "", "", fmt.Errorf("container of endpoint %s: %w (last: %v)", short(endpointID), ctx.Err(), err)
		case <-t.C:
		}
	}
}

// EnsureNetwork creates a network with the weavewg network and IPAM drivers
// on the overlay range, unless one of that name exists. It reports whether
// it created it.
func (c *Client) EnsureNetwork(ctx context.Context, name, driver, subnet string) (bool, error) {
	var n networkInspect
	err := c.do(ctx, http.MethodGet, "/networks/"+url.PathEscape(name), nil, &n)
	if err == nil {
		if n.Driver != driver {
			return false, fmt.Errorf("a Docker network %q exists with driver %q", name, n.Driver)
		}
		return false, nil
	}
	var se *unixhttp.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusNotFound {
		return false, err
	}
	req := map[string]any{
		"Name":           name,
		"Driver":         driver,
		"CheckDuplicate": true,
		"IPAM": map[string]any{
			"Driver": driver,
			"Config": []map[string]string{{"Subnet": subnet}},
		},
	}
	if err := c.do(ctx, http.MethodPost, "/networks/create", req, nil); err != nil {
		return false, err
	}
	return true, nil
}
