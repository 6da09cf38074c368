package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/daemon"
	"github.com/weavewg/weavewg/docker"
	"github.com/weavewg/weavewg/types/api"
)

// dockerFlags are launch's flags for the Docker plugin.
func dockerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "docker-plugin-socket", Value: daemon.DefaultDockerPluginSocket, Usage: `where the Docker network and IPAM plugin "weavewg" is served ("" disables it)`},
		&cli.StringFlag{Name: "docker-socket", Value: daemon.DefaultDockerSocket, Usage: "the Docker API socket, asked for container names"},
		&cli.BoolFlag{Name: "no-docker-network", Usage: "do not create the Docker network named weavewg"},
	}
}

func dockerConfig(c *cli.Context) daemon.DockerConfig {
	return daemon.DockerConfig{
		PluginSocket: c.String("docker-plugin-socket"),
		Socket:       c.String("docker-socket"),
		NoNetwork:    c.Bool("no-docker-network"),
	}
}

func dnsArgsCommand() *cli.Command {
	return &cli.Command{
		Name:  "dns-args",
		Usage: "print the docker run flags that make a container use weavewg's DNS",
		Description: `Prints --dns with this host's overlay address and --dns-search with the
weavewg domain, e.g.: docker run --net weavewg $(weavewg dns-args) ...`,
		Flags: []cli.Flag{apiSocketFlag()},
		Action: func(c *cli.Context) error {
			var st api.Status
			if err := newClient(c).do("GET", api.PathStatus, nil, &st); err != nil {
				return err
			}
			if !st.DNS.Enabled {
				return fmt.Errorf("DNS is off on this host (launched with --no-dns)")
			}
			args, err := daemon.DNSArgs(st.HostIP, st.DNS.Domain)
			if err != nil {
				return err
			}
			fmt.Println(strings.Join(args, " "))
			return nil
		},
	}
}

// pluginGuardCommand is the process the daemon starts to answer on the
// Docker plugin socket once it is gone (docker/guard.go); not for users.
func pluginGuardCommand() *cli.Command {
	return &cli.Command{
		Name:   docker.GuardCommand,
		Hidden: true,
		Usage:  "answer Docker's plugin calls with an error while the daemon is down (started by the daemon)",
		Flags:  []cli.Flag{&cli.StringFlag{Name: "socket", Required: true}},
		Action: func(c *cli.Context) error {
			ln, err := net.FileListener(os.NewFile(3, "plugin socket"))
			if err != nil {
				return fmt.Errorf("plugin guard: fd 3: %w", err)
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return docker.RunGuard(ctx, c.String("socket"), ln, os.NewFile(4, "daemon pipe"))
		},
	}
}
