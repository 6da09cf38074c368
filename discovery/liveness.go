package discovery

import (
	"net"
	"time"
)

// Liveness of a control connection.
//
// A peer that is cut off (its host gone, a link down, a firewall dropping
// it) sends no FIN: only silence says it is gone. The kernel watches for
// that at no cost to either daemon: TCP keepalive probes after
// tcpKeepIdle of silence, every tcpKeepInterval, tcpKeepCount unanswered
// probes close the connection, and TCP_USER_TIMEOUT bounds how long
// written data may stay unacknowledged. A cut-off peer is so noticed
// within about 20 s, as the application keepalives every 5 s did, but the
// probes are answered by the peer's kernel: an idle connection no longer
// wakes either daemon (issue 18: a peer holds up to --conn-limit of them,
// and their keepalive timers were most of an idle daemon's wakeups).
//
// Application keepalives remain, rarely (tunables.keepalive, 30 s), for
// what the kernel cannot see: a peer whose process hangs while its kernel
// answers (nothing read for readTimeout closes), and networks that are not
// TCP (the simulator's pipes).
const (
	tcpKeepIdle     = 5 * time.Second
	tcpKeepInterval = 5 * time.Second
	tcpKeepCount    = 3
	tcpUserTimeout  = 20 * time.Second
)

// watchLiveness has the kernel close nc when its peer falls silent; it
// does nothing for a connection that is not TCP.
func watchLiveness(nc net.Conn) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return
	}
	// Errors leave the defaults (Go's own keepalive, 15 s) and the
	// application keepalive's read timeout: slower, never wrong.
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: tcpKeepIdle, Interval: tcpKeepInterval, Count: tcpKeepCount})
	setUserTimeout(tc, tcpUserTimeout)
}
