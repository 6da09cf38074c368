// Package unixhttp is HTTP with JSON bodies over a unix socket, both ends:
// Listen serves a socket, replacing one left by a crash, and Client calls
// one. The daemon's API, the Docker plugin socket, the Docker engine client,
// the CLI and the CNI plugin all use it.
package unixhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrInUse is returned by Listen when something answers on the socket.
var ErrInUse = errors.New("something answers on the socket already")

// Listen listens on a unix socket at path with the given file mode, making
// its directory if needed. A socket file nobody answers on is left over from
// a crash and is replaced (a stale socket makes clients such as Docker hang);
// one somebody answers on is ErrInUse. The caller removes the socket when it
// stops serving.
func Listen(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: %w", path, ErrInUse)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, err
	}
	return ln, nil
}

// Client calls an HTTP server on a unix socket with JSON bodies.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client of the server at socket; timeout bounds each
// call (0: none beyond the caller's context).
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{
		Socket: socket,
		http: &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", socket)
				},
			},
		},
	}
}

// StatusError is an answer other than 2xx. Message is the server's own
// words: the "error" or "message" field of a JSON body, else the body.
type StatusError struct {
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("HTTP %d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Message
}

// DialError is a failure to reach the server at all: nothing listens, or
// the socket is missing.
type DialError struct {
	Socket string
	Err    error
}

func (e *DialError) Error() string { return fmt.Sprintf("cannot reach %s: %v", e.Socket, e.Err) }
func (e *DialError) Unwrap() error { return e.Err }

// Do sends in as JSON (if not nil) to path with method and decodes a 2xx
// answer into out (if not nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://unix"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return &DialError{Socket: c.Socket, Err: opErr.Err}
		}
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil {
			switch {
			case e.Error != "":
				msg = e.Error
			case e.Message != "":
				msg = e.Message
			}
		}
		return &StatusError{Status: resp.StatusCode, Message: msg}
	}
	if out != nil && len(bytes.TrimSpace(b)) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}
