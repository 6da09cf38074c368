package daemon

import "io"

// uapiPlane is the data plane's optional WireGuard UAPI socket (tunnel's
// userspace device has one; a kernel device would be seen by wg anyway).
type uapiPlane interface {
	ServeUAPI(dir string) (io.Closer, error)
}

// serveUAPI opens the WireGuard UAPI socket, so `wg show IFACE` works. It
// is a diagnostic: failing to open it is logged, and the daemon runs on.
func (d *Daemon) serveUAPI() {
	if d.cfg.WGUAPIDir == "" {
		return
	}
	up, ok := d.tun.(uapiPlane)
	if !ok {
		return
	}
	c, err := up.ServeUAPI(d.cfg.WGUAPIDir)
	if err != nil {
		d.log.Warn("no WireGuard UAPI socket; wg show will not see this device", "dir", d.cfg.WGUAPIDir, "err", err)
		return
	}
	d.closers.add("wireguard uapi", c.Close)
}
