package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/daemon"
	"github.com/weavewg/weavewg/discovery"
	"github.com/weavewg/weavewg/reach"
	"github.com/weavewg/weavewg/tunnel"
)

func launchCommand() *cli.Command {
	return &cli.Command{
		Name:      "launch",
		Usage:     "run the weavewg router on this host (in the foreground)",
		ArgsUsage: "[PEER_HOST[:PORT] ...]",
		Description: `Runs the daemon until SIGINT or SIGTERM: a TUN device driven by wireguard-go,
a bridge for containers, the control plane on TCP --port and WireGuard on UDP
--port.

On a host with no network yet, launch creates one and, when its output is a
terminal, prints a 'weavewg join TOKEN' line for one other host, valid for an
hour (a token hands out the network secret; under systemd nothing is
printed). 'weavewg token create' makes tokens for the others. A host that has joined
restarts with plain 'weavewg launch': the state dir remembers its network.

Weave-style setups give every host the same --password instead, and name
hosts already running weavewg as PEER arguments (dialled with backoff until
they answer; the rest of the mesh is learned from them).`,
		Flags:  daemonFlags(),
		Action: func(c *cli.Context) error { return runDaemon(c, c.Args().Slice(), nil) },
	}
}

// daemonFlags are the flags of launch and join.
func daemonFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "nickname shown beside this peer's name (default: the hostname)"},
		&cli.UintFlag{Name: "port", Value: daemon.DefaultPort, Usage: "TCP (control) and UDP (WireGuard) port"},
		&cli.StringFlag{Name: "password", EnvVars: []string{"WEAVEWG_PASSWORD"}, Usage: "network password; every host of the network needs the same one"},
		&cli.StringFlag{Name: "state-dir", Value: daemon.DefaultStateDir, Usage: "where the identity key and attachments are kept"},
		apiSocketFlag(),
		&cli.StringFlag{Name: "iface", Value: daemon.DefaultIface, Usage: "name of the TUN device"},
		&cli.StringFlag{Name: "bridge", Value: daemon.DefaultBridge, Usage: "name of the bridge containers are attached to"},
		&cli.IntFlag{Name: "mtu", Usage: "tunnel MTU, also given to every container interface, fixed for every peer (default: the underlay's MTU less 80 bytes of IPv4, UDP, WireGuard and relay headers, and smaller towards peers whose path is smaller, found by probing)"},
		&cli.StringFlag{Name: "host-ip", Usage: "this host's overlay address as CIDR with the range's prefix length, e.g. 10.32.0.1/12, claimed in IPAM (default: allocated by IPAM in the default subnet and kept in the state dir)"},
		&cli.StringFlag{Name: "ipalloc-default-subnet", Usage: "the subnet of --ipalloc-range that addresses come from when none is asked for, e.g. 10.32.0.0/14; the rest of the range is for isolated subnets (attach --net CIDR, docker network create --subnet CIDR) whose containers reach only each other (default: the whole range, no isolated subnets). It belongs to the network: a host that joins with a token takes the network's, and one given another is refused"},
		&cli.StringFlag{Name: "ipalloc-range", Value: daemon.DefaultRange, Usage: "the overlay network's address range: private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) space, overlapping no local interface's subnet"},
		&cli.BoolFlag{Name: "force-range", Usage: "allow an --ipalloc-range outside private and CGNAT space (addresses you own)"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "wg-uapi-dir", Value: tunnel.DefaultUAPIDir, Usage: "where the WireGuard device's socket IFACE.sock is made, so that 'wg show' sees it (read-only; \"\" for none)"},
		&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:6782, or an underlay address (default: off; always on the API socket). The overlay reaches the host only after 'weavewg expose'"},
		&cli.StringFlag{Name: "trusted-subnets", Usage: "underlay subnets, CIDR,... (e.g. 192.168.1.0/24), where traffic between two peers that both have an address in them goes UNENCRYPTED through kernel VXLAN on UDP --port+1 (6784); every other pair stays on WireGuard"},
		&cli.StringFlag{Name: "datapath", Value: daemon.DatapathAuto, Usage: "what carries WireGuard packets: kernel (the kernel's WireGuard device on --port for peers with a direct path; relayed peers, STUN and relay frames stay in userspace on --port+2, steered there by an nftables table), userspace (wireguard-go for every peer), or auto (kernel when the kernel can create a wireguard link, else userspace)"},
		&cli.IntFlag{Name: "conn-limit", Value: discovery.DefaultConnLimit, Usage: "most control connections this peer holds (Weave Net's flag). A mesh of up to half this many peers plus one is a full mesh; in a larger one each peer holds half to all of this many, chosen to keep the mesh well connected, and gossip crosses several hops. Peers given on the command line are dialled even past it"},
		&cli.DurationFlag{Name: "reclaim-after", Usage: "take over the address space of peers unreachable this long (e.g. 24h; default off)"},
		&cli.BoolFlag{Name: "multicast-link-local", Usage: "also replicate link-local multicast (224.0.0.0/24, e.g. mDNS) to the other hosts with containers; by default it stays on its host"},
		&cli.DurationFlag{Name: "idle-after", Value: reach.DefaultIdleAfter, Usage: "a pair of hosts that carried no container traffic this long stops its path probes, keepalives and NAT traversal until its next packet, so an idle mesh costs little however large (0: never)"},
		&cli.BoolFlag{Name: "no-dns", Usage: "run without the DNS server"},
		&cli.StringFlag{Name: "dns-domain", Value: "weave.local.", Usage: "the domain answered from the gossiped name table"},
		&cli.DurationFlag{Name: "dns-ttl", Value: time.Second, Usage: "TTL of weave.local answers (short, so load balancing and moves take effect)"},
		&cli.StringSliceFlag{Name: "dns-upstream", Usage: "upstream resolver for other names, IP[:PORT] (repeatable; default: from /etc/resolv.conf)"},
		&cli.StringFlag{Name: "dns-resolv-conf", Value: "/etc/resolv.conf", Usage: "where upstream resolvers are read from when --dns-upstream is not given"},
	}, dockerFlags()...)
}

// runDaemon runs the daemon in the foreground, dialling peers; adm is set
// after a join.
func runDaemon(c *cli.Context, peers []string, adm *daemon.Admission) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	port := c.Uint("port")
	if port == 0 || port > 65535 {
		return fmt.Errorf("--port %d: want 1-65535", port)
	}
	rng, err := netip.ParsePrefix(c.String("ipalloc-range"))
	if err != nil {
		return fmt.Errorf("--ipalloc-range: %w", err)
	}
	trusted, err := parseTrustedSubnets(c.String("trusted-subnets"))
	if err != nil {
		return err
	}
	var hostIP netip.Prefix
	if n := c.Int("conn-limit"); n < 1 || n > discovery.MaxNeighbors {
		return fmt.Errorf("--conn-limit %d: want 1 to %d", n, discovery.MaxNeighbors)
	}
	if s := c.String("host-ip"); s != "" {
		if hostIP, err = netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("--host-ip %q: want an address with prefix length, e.g. 10.32.0.1/12", s)
		}
	}
	var defSubnet netip.Prefix
	if s := c.String("ipalloc-default-subnet"); s != "" {
		if defSubnet, err = netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("--ipalloc-default-subnet %q: want a CIDR inside --ipalloc-range, e.g. 10.32.0.0/14", s)
		}
	}
	nick := c.String("name")
	if nick == "" {
		nick, _ = os.Hostname()
	}
	if os.Geteuid() != 0 {
		return errors.New("launch needs root (it creates a TUN device, a bridge and routes)")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg := daemon.Config{
		Nickname:      nick,
		Port:          uint16(port),
		Password:      c.String("password"),
		StateDir:      c.String("state-dir"),
		APISocket:     c.String("api-socket"),
		Iface:         c.String("iface"),
		Bridge:        c.String("bridge"),
		MTU:           c.Int("mtu"),
		HostIP:        hostIP,
		Range:         rng,
		DefaultSubnet: defSubnet,
		ForceRange:    c.Bool("force-range"),
		Peers:         peers,
		Logger:        logger,
		Build:         buildInfo(),

		MetricsAddr: c.String("metrics-addr"),
		WGUAPIDir:   c.String("wg-uapi-dir"),

		TrustedSubnets:     trusted,
		Datapath:           c.String("datapath"),
		ReclaimAfter:       c.Duration("reclaim-after"),
		IdleAfter:          idleAfterFlag(c.Duration("idle-after")),
		ConnLimit:          c.Int("conn-limit"),
		NoDNS:              c.Bool("no-dns"),
		MulticastLinkLocal: c.Bool("multicast-link-local"),
		DNSDomain:          c.String("dns-domain"),
		DNSTTL:             c.Duration("dns-ttl"),
		DNSUpstreams:       c.StringSlice("dns-upstream"),
		DNSResolvConf:      c.String("dns-resolv-conf"),
		Docker:             dockerConfig(c),
		Notify: func(msg string) {
			fmt.Println("weavewg:", msg)
		},
	}
	if isTerminal(os.Stdout) {
		cfg.Terminal = func(msg string) { fmt.Println("weavewg:", msg) }
	}
	if adm != nil {
		cfg.Admission = &adm.Result
		cfg.Peers = adm.Peers
	}
	return daemon.Run(ctx, cfg)
}

// parseTrustedSubnets reads --trusted-subnets: IPv4 CIDRs separated by
// commas. A bare address counts as a /32.
func parseTrustedSubnets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("--trusted-subnets %q: want CIDR,... e.g. 192.168.1.0/24,10.0.0.0/8", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("--trusted-subnets %q: only IPv4 underlays are supported", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// idleAfterFlag maps --idle-after to daemon.Config.IdleAfter, where 0 means
// the default and a negative value never: on the command line 0 says never.
func idleAfterFlag(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
