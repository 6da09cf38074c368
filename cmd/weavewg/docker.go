package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/daemon"
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
