package daemon

import (
	"errors"
	"fmt"
	"sync"
)

// closers is the daemon's shutdown list: each part registers how to close
// itself as soon as it has started, and close runs them in reverse order
// of start, each once. A failed start and a normal stop use the same list,
// so no part can be forgotten on one of the paths.
type closers struct {
	mu   sync.Mutex
	list []namedCloser // in order of start; emptied by close
}

type namedCloser struct {
	name  string
	close func() error
}

// add registers f, which closes the part called name.
func (c *closers) add(name string, f func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.list = append(c.list, namedCloser{name, f})
}

// close runs every registered closer, last started first, and returns
// their errors joined, each prefixed with its part's name. Closers run
// once: a second call (or one after a failed start) does nothing.
func (c *closers) close() error {
	c.mu.Lock()
	list := c.list
	c.list = nil
	c.mu.Unlock()
	var errs []error
	for i := len(list) - 1; i >= 0; i-- {
		if err := list[i].close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", list[i].name, err))
		}
	}
	return errors.Join(errs...)
}
