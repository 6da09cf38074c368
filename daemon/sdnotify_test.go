package daemon

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSdNotify: under a service manager (NOTIFY_SOCKET set, as systemd
// sets it for Type=notify), run says READY=1 once the API socket answers
// and STOPPING=1 when told to stop, each one datagram.
func TestSdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	read := func() string {
		t.Helper()
		ln.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}

	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, newFakeRouter(), newFakeTunnel())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	msg := read()
	if !strings.HasPrefix(msg, "READY=1\n") || !strings.Contains(msg, "STATUS=") {
		t.Fatalf("first notification %q, want READY=1 with a STATUS", msg)
	}
	c, err := net.Dial("unix", cfg.APISocket)
	if err != nil {
		t.Fatalf("READY=1 sent before the API socket answers: %v", err)
	}
	c.Close()
	cancel()
	if msg := read(); msg != "STOPPING=1" {
		t.Errorf("on stop: %q, want STOPPING=1", msg)
	}
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	done <- nil
}
