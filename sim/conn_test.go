package sim

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"
)

// Read deadlines of the in-memory connection, as a router moves them:
// a later deadline set while a Read waits (which wakes nobody) does not
// fail that Read at the earlier one; an earlier one, or one set where
// none was, ends a waiting Read when it passes.
func TestMemConnReadDeadlines(t *testing.T) {
	a, b := newConnPair(netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2"), nil, nil)
	defer a.Close()
	defer b.Close()
	read := func() chan error {
		done := make(chan error, 1)
		go func() {
			_, err := a.Read(make([]byte, 8))
			done <- err
		}()
		return done
	}

	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	done := read()
	a.SetReadDeadline(time.Now().Add(time.Minute)) // later: no wake-up
	time.Sleep(200 * time.Millisecond)             // past the first deadline
	b.Write([]byte("x"))
	if err := <-done; err != nil {
		t.Fatalf("a Read whose deadline was moved later failed at the earlier one: %v", err)
	}

	done = read()
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) // earlier
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a Read whose deadline was moved earlier ended with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a Read whose deadline was moved earlier still waits")
	}

	a.SetReadDeadline(time.Time{})
	done = read()
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) // where none was
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a Read given a deadline while it waited ended with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a Read given a deadline while it waited still waits")
	}
}
