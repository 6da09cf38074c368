package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/weavewg/weavewg/types/api"
)

// progressAfter is how long attach stays quiet before saying what it waits
// for: an attach on a connected peer takes milliseconds.
const progressAfter = time.Second

// attachWithProgress attaches and, while the daemon waits for address space,
// says on w what it waits for (the daemon's own reason), overwriting one
// line on a terminal and printing one every 5 s otherwise.
func attachWithProgress(cl *client, req api.AttachRequest, wait time.Duration, w io.Writer) (api.Attachment, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait+callTimeout)
	defer cancel()
	type result struct {
		a   api.Attachment
		err error
	}
	done := make(chan result, 1)
	go func() {
		var a api.Attachment
		err := cl.doCtx(ctx, "POST", api.PathAttach, req, &a)
		done <- result{a, err}
	}()
	tty := isTerminal(w)
	start := time.Now()
	tick := time.NewTicker(progressAfter)
	defer tick.Stop()
	var lastPrinted time.Time
	shown := false
	for {
		select {
		case r := <-done:
			if shown && tty {
				fmt.Fprintln(w)
			}
			return r.a, r.err
		case now := <-tick.C:
			var ready api.AttachReady
			if err := cl.do("GET", api.PathAttachReady, nil, &ready); err != nil || ready.Ready {
				continue // the attach itself reports what went wrong
			}
			line := fmt.Sprintf("waiting for address space (%s of %s): %s", now.Sub(start).Round(time.Second), wait, ready.Reason)
			switch {
			case tty:
				fmt.Fprintf(w, "\r\033[K%s", line)
			case now.Sub(lastPrinted) >= 5*time.Second:
				fmt.Fprintln(w, line)
				lastPrinted = now
			default:
				continue
			}
			shown = true
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
