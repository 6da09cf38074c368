//go:build !linux

package discovery

import (
	"net"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT is not known: the
// keepalive probes alone notice a silent peer.
func setUserTimeout(*net.TCPConn, time.Duration) {}
