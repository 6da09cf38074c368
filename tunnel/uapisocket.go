package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weavewg/weavewg/types/unixhttp"
)

// DefaultUAPIDir is where wireguard-tools looks for userspace devices:
// `wg show NAME` connects to DIR/NAME.sock (wireguard-tools' SOCK_PATH,
// fixed at its build time; there is no environment variable for it).
const DefaultUAPIDir = "/var/run/wireguard"

// uapiTimeout bounds one UAPI connection: wg sends a request and reads
// the answer at once.
const uapiTimeout = 5 * time.Second

// UAPI errno values, as wireguard-go writes them (negative).
var (
	uapiErrPerm    = -int64(unix.EPERM)
	uapiErrInvalid = -int64(unix.EINVAL)
)

// ServeUAPI serves WireGuard's cross-platform userspace API
// (https://www.wireguard.com/xplatform/) on dir/IFACE.sock, so that
// `wg show` sees the device. Unlike wireguard-go's own ipc listener it takes
// the directory as an argument (several hosts of a namespace test bed share
// one /var/run) and it is read-only: get=1 is answered, set=1 is refused
// with EPERM, since weavewg owns the configuration and would undo any
// change at its next reconcile. Relayed peers' endpoints ("relay:ID") are
// left out of the answer: wg would try to resolve them as host:port and
// fail the whole command. Close stops serving and removes the socket.
func (t *Tunnel) ServeUAPI(dir string) (io.Closer, error) {
	if t.dev == nil {
		return nil, ErrClosed
	}
	path := filepath.Join(dir, t.cfg.Iface+".sock")
	ln, err := unixhttp.Listen(path, 0o600)
	if err != nil {
		return nil, fmt.Errorf("wireguard uapi socket: %w", err)
	}
	u := &uapiServer{t: t, ln: ln, path: path, conns: map[net.Conn]bool{}}
	u.wg.Add(1)
	go u.serve()
	return u, nil
}

type uapiServer struct {
	t    *Tunnel
	ln   net.Listener
	path string
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]bool // guarded by mu
	closed bool              // guarded by mu
}

func (u *uapiServer) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				u.t.log.Warn("wireguard uapi socket stopped", "path", u.path, "err", err)
			}
			return
		}
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			c.Close()
			return
		}
		u.conns[c] = true
		u.wg.Add(1)
		u.mu.Unlock()
		go func() {
			defer u.wg.Done()
			u.handle(c)
			u.mu.Lock()
			delete(u.conns, c)
			u.mu.Unlock()
		}()
	}
}

// handle answers the operations on one connection until it closes.
func (u *uapiServer) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(uapiTimeout))
	r := bufio.NewReader(c)
	for {
		op, err := r.ReadString('\n')
		if err != nil {
			return
		}
		var errno int64
		var body []byte
		switch op {
		case "get=1\n":
			if b, err := r.ReadByte(); err != nil {
				return
			} else if b != '\n' {
				errno = uapiErrInvalid
				break
			}
			var buf bytes.Buffer
			if err := u.t.dev.IpcGetOperation(&buf); err != nil {
				errno = uapiErrInvalid
				break
			}
			body = withoutRelayEndpoints(buf.Bytes())
		case "set=1\n":
			// Read the request to its blank line, then refuse it.
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == "\n" {
					break
				}
			}
			errno = uapiErrPerm
		default:
			return
		}
		if _, err := fmt.Fprintf(c, "%serrno=%d\n\n", body, errno); err != nil {
			return
		}
	}
}

// withoutRelayEndpoints drops the endpoint lines of relayed peers from a
// UAPI get answer (one key=value per line).
func withoutRelayEndpoints(get []byte) []byte {
	var out bytes.Buffer
	for _, l := range strings.SplitAfter(string(get), "\n") {
		if strings.HasPrefix(l, "endpoint="+relayEndpointPrefix) {
			continue
		}
		out.WriteString(l)
	}
	return out.Bytes()
}

func (u *uapiServer) Close() error {
	u.mu.Lock()
	u.closed = true
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	err := u.ln.Close()
	u.wg.Wait()
	if rmErr := os.Remove(u.path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) && err == nil {
		err = rmErr
	}
	return err
}
