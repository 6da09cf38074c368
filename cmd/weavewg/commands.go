package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func connectCommand() *cli.Command {
	return addressCommand("connect", "add a peer address to the running daemon; it is dialled until it answers", api.PathConnect)
}

func forgetCommand() *cli.Command {
	return addressCommand("forget", "stop connecting to a peer address given to launch or connect", api.PathForget)
}

// addressCommand is a command that sends one HOST[:PORT] to path.
func addressCommand(name, usage, path string) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "HOST[:PORT]",
		Flags:     []cli.Flag{apiSocketFlag()},
		Action: func(c *cli.Context) error {
			addr, err := oneArg(c, "HOST[:PORT]")
			if err != nil {
				return err
			}
			return newClient(c).do("POST", path, api.ConnectRequest{Address: addr}, nil)
		},
	}
}

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "give a network namespace an interface (ethwe0) on the overlay",
		ArgsUsage: "NETNS_PATH|NETNS_NAME|PID",
		Description: `The target is a network namespace path (/var/run/netns/NAME, /proc/PID/ns/net),
the name of a namespace made with 'ip netns add', or the PID of a process in it.
It gets ethwe0 with an address from the network's allocator (or --ip, which
must lie in this peer's part of the range) and the tunnel MTU, its host end on
the weavewg bridge. --name registers NAME.weave.local in DNS. Prints the address.

--net CIDR attaches to an isolated subnet of the range (Weave Net's
net:CIDR; launch --ipalloc-default-subnet leaves room for them): ethwe0 gets
the subnet's prefix length, and its containers, on any host, reach each
other and no other subnet's (the hosts drop what crosses, whatever routes a
container adds). Without --net the address is in the default subnet.

--egress gives a namespace with no other way out a default route through
its host, which masquerades its traffic to the host's own address on the
host's uplink (weavewg adds what the host's firewall needs to let it out:
Docker's and ufw's forward policy DROP included). Other containers cannot
leave through the host, whatever routes they add.

On a host that has just joined, the address space arrives from the peers
within a second or two; attach waits for it (a progress line on stderr says
what it waits for) up to --timeout, then fails with the reason.`,
		Flags: []cli.Flag{
			apiSocketFlag(),
			&cli.StringFlag{Name: "ip", Usage: "a specific address, e.g. 10.32.1.5/12 (default: the next free one of the subnet)"},
			&cli.StringFlag{Name: "net", Usage: "an isolated subnet of the range, e.g. 10.33.1.0/24 (default: the default subnet)"},
			&cli.BoolFlag{Name: "egress", Usage: "a default route through this host, masqueraded out of its uplink"},
			&cli.StringFlag{Name: "name", Usage: "a name for the attachment, registered as NAME.weave.local"},
			&cli.BoolFlag{Name: "json", Usage: "print the attachment as JSON"},
			&cli.DurationFlag{Name: "timeout", Value: api.DefaultAttachWait, Usage: "how long to wait for address space while this peer joins the network"},
		},
		Action: func(c *cli.Context) error {
			target, err := oneArg(c, "NETNS_PATH|NETNS_NAME|PID")
			if err != nil {
				return err
			}
			ns, err := netnsPath(target)
			if err != nil {
				return err
			}
			wait := c.Duration("timeout")
			if wait <= 0 {
				return errors.New("--timeout must be positive")
			}
			req := api.AttachRequest{Netns: ns, IP: c.String("ip"), Name: c.String("name"), WaitSeconds: wait.Seconds(),
				Net: c.String("net"), Egress: c.Bool("egress")}
			a, err := attachWithProgress(newClient(c), req, wait, os.Stderr)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(a)
			}
			fmt.Println(a.IP)
			return nil
		},
	}
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "remove a namespace's overlay interface",
		ArgsUsage: "NETNS_PATH|NETNS_NAME|PID",
		Flags:     []cli.Flag{apiSocketFlag()},
		Action: func(c *cli.Context) error {
			target, err := oneArg(c, "NETNS_PATH|NETNS_NAME|PID")
			if err != nil {
				return err
			}
			ns, err := netnsPath(target)
			if err != nil {
				return err
			}
			return newClient(c).do("POST", api.PathDetach, api.DetachRequest{Netns: ns}, nil)
		},
	}
}

func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s needs exactly one argument: %s", c.Command.Name, what)
	}
	return c.Args().First(), nil
}

// netnsPath turns what a user names a namespace by into a path the daemon can
// open. A PID's namespace is named by its /proc path; if the process exits the
// attachment goes with it.
func netnsPath(target string) (string, error) {
	if pid, err := strconv.Atoi(target); err == nil {
		if pid <= 0 {
			return "", fmt.Errorf("%q is not a process ID", target)
		}
		p := fmt.Sprintf("/proc/%d/ns/net", pid)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("no process %d", pid)
		}
		return p, nil
	}
	if filepath.IsAbs(target) {
		return target, nil
	}
	p := filepath.Join("/var/run/netns", target)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	abs, err := filepath.Abs(target)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", errors.New("no network namespace " + target + " (want a path, an 'ip netns' name or a PID)")
	}
	return abs, nil
}
