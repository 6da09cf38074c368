package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/unixhttp"
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
	c *unixhttp.Client
}

// callTimeout bounds a call; attach raises it by its own wait.
const callTimeout = 30 * time.Second

func newClient(c *cli.Context) *client {
	return &client{c: unixhttp.NewClient(c.String("api-socket"), 0)}
}

// do sends in (if not nil) and decodes the answer into out (if not nil).
func (c *client) do(method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return c.doCtx(ctx, method, path, in, out)
}

func (c *client) doCtx(ctx context.Context, method, path string, in, out any) error {
	return daemonError(c.c.Do(ctx, method, path, in, out))
}

// daemonError words a failure to reach the daemon for the user.
func daemonError(err error) error {
	var de *unixhttp.DialError
	if errors.As(err, &de) {
		return fmt.Errorf("cannot reach the weavewg daemon at %s (is `weavewg launch` running? set --api-socket or %s): %v",
			de.Socket, api.EnvSocket, de.Err)
	}
	return err
}
