package discovery

import (
	"context"
	"net"

	"github.com/weavewg/weavewg/types/key"
)

// Network is where a Router listens for and dials control connections. The
// daemon uses the host's TCP stack (the default); the simulator (package
// sim) runs many routers in one process over an in-memory network. Whatever
// carries the bytes, every connection still runs the Noise handshake and
// framing of conn.go, so the simulated control plane is the real one.
type Network interface {
	// Listen listens on addr, HOST:PORT as Config.ListenAddr gives it.
	Listen(addr string) (net.Listener, error)
	// DialContext connects to addr, IP:PORT. The router bounds ctx with
	// its dial timeout.
	DialContext(ctx context.Context, addr string) (net.Conn, error)
}

// tcpNetwork is the host's TCP stack.
type tcpNetwork struct{}

func (tcpNetwork) Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func (tcpNetwork) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// Verifier checks a signature by p over msg in domain; key.Verify is the
// default. The simulator shares one caching Verifier between its routers so
// that a record verified at one simulated peer is not verified again at the
// next (each real host verifies it once; see package sim).
type Verifier func(p key.Public, domain string, msg []byte, sig *key.Signature) error
