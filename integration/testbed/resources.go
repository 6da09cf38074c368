package testbed

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// OpenFiles counts the daemon's open file descriptors (/proc/PID/fd).
func (h *Host) OpenFiles() (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h.Pid()))
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// Goroutines reads the daemon's goroutine count from its pprof endpoint on
// the API socket.
func (h *Host) Goroutines() (int, error) {
	resp, err := h.httpClient().Get("http://weavewg/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return 0, err
	}
	// "goroutine profile: total N"
	line, _, _ := strings.Cut(string(body), "\n")
	_, n, ok := strings.Cut(line, "total ")
	if !ok {
		return 0, fmt.Errorf("goroutine profile starts %q", line)
	}
	return strconv.Atoi(strings.TrimSpace(n))
}
