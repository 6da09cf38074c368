package unixhttp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.sock")
	ln, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := Listen(path, 0o600); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Listen while served = %v, want ErrInUse", err)
	}
	// A crash leaves the file behind with nobody answering.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left for the test: %v", err)
	}
	ln2, err := Listen(path, 0o600)
	if err != nil {
		t.Fatalf("Listen over a stale socket = %v", err)
	}
	ln2.Close()
}

func TestClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	ln, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			var v map[string]string
			json.NewDecoder(r.Body).Decode(&v)
			json.NewEncoder(w).Encode(v)
		case "/weavewg-error":
			w.WriteHeader(400)
			w.Write([]byte(`{"error":"netns is required"}`))
		case "/docker-error":
			w.WriteHeader(404)
			w.Write([]byte(`{"message":"network x not found"}`))
		default:
			w.WriteHeader(500)
			w.Write([]byte("plain text"))
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := NewClient(path, 0)
	ctx := context.Background()
	var out map[string]string
	if err := c.Do(ctx, "POST", "/echo", map[string]string{"a": "b"}, &out); err != nil || out["a"] != "b" {
		t.Fatalf("echo = %v, %v", out, err)
	}
	for path, want := range map[string]string{"/weavewg-error": "netns is required", "/docker-error": "network x not found", "/other": "plain text"} {
		err := c.Do(ctx, "GET", path, nil, nil)
		var se *StatusError
		if !errors.As(err, &se) || se.Message != want {
			t.Errorf("GET %s = %v, want a StatusError %q", path, err, want)
		}
	}
	var de *DialError
	if err := NewClient(filepath.Join(t.TempDir(), "none.sock"), 0).Do(ctx, "GET", "/", nil, nil); !errors.As(err, &de) {
		t.Errorf("no server: %v, want a DialError", err)
	}
}
