package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func apiSocketFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "api-socket",
		Usage:   "the daemon's API socket",
		EnvVars: []string{api.EnvSocket},
		Value:   api.DefaultSocket,
	}
}

// client talks to the daemon over its unix socket.
type client struct {
	socket string
	http   *http.Client
}

func newClient(c *cli.Context) *client {
	socket := c.String("api-socket")
	return &client{
		socket: socket,
		http: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", socket)
				},
			},
		},
	}
}

// do sends in (if not nil) and decodes the answer into out (if not nil).
func (c *client) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://weavewg"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) {
			return fmt.Errorf("cannot reach the weavewg daemon at %s (is `weavewg launch` running? set --api-socket or %s): %v",
				c.socket, api.EnvSocket, opErr.Err)
		}
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}
