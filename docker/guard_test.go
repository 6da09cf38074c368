package docker

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The guard answers activation as the plugin does and every driver call
// with the error that says the daemon is down.
func TestGuardHandler(t *testing.T) {
	srv := httptest.NewServer(GuardHandler())
	defer srv.Close()
	call := func(method string) (int, map[string]any) {
		resp, err := http.Post(srv.URL+"/"+method, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, m := call("Plugin.Activate"); code != 200 || len(m["Implements"].([]any)) != 2 {
		t.Errorf("Plugin.Activate: %d %v", code, m)
	}
	for _, method := range []string{"IpamDriver.RequestAddress", "NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "Nonsense"} {
		if code, m := call(method); code != 500 || m["Err"] != ErrDaemonDown {
			t.Errorf("%s: %d %v; want 500 with ErrDaemonDown", method, code, m)
		}
	}
}

// RunGuard waits while the daemon's pipe is open, answers on the socket
// once it closes, and ends when the socket file is removed.
func TestRunGuard(t *testing.T) {
	path := filepath.Join(t.TempDir(), "weavewg.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- RunGuard(context.Background(), path, ln, r) }()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	// Nobody accepts while the pipe is open: the call waits (and times out).
	if _, err := c.Post("http://plugin/IpamDriver.RequestAddress", "application/json", strings.NewReader("{}")); err == nil {
		t.Fatal("the guard answered while the daemon's pipe was open")
	}
	w.Close()
	resp, err := c.Post("http://plugin/IpamDriver.RequestAddress", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if m["Err"] != ErrDaemonDown {
		t.Errorf("answer %v", m)
	}
	os.Remove(path)
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the guard did not end when its socket file was removed")
	}
	if !isGuardCmdline("/usr/bin/weavewg\x00"+GuardCommand+"\x00--socket\x00"+path+"\x00", path) || isGuardCmdline("/usr/bin/sleep\x00100\x00", path) {
		t.Error("isGuardCmdline")
	}
}
