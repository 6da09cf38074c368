package daemon

import (
	"net"
	"os"
)

// sdNotify sends state ("READY=1", "STOPPING=1", "STATUS=…") to the
// service manager when there is one: systemd's notify protocol is one
// datagram to the unix socket named by $NOTIFY_SOCKET (a leading @ names
// an abstract socket), see sd_notify(3). Without the variable it does
// nothing; a failure is returned for logging, never fatal.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// notifyManager tells the service manager state, logging a failure.
func (d *Daemon) notifyManager(state string) {
	if err := sdNotify(state); err != nil {
		d.log.Warn("cannot notify the service manager", "notify_socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}
}
