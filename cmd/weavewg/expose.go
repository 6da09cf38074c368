package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func exposeCommand() *cli.Command {
	return exposeHideCommand("expose", api.PathExpose,
		"open this host to the overlay: its containers (of the default subnet, or of SUBNET) may reach the host's services",
		`By default a host's own services are closed to the overlay: containers on
any host reach its DNS (port 53 on the host's overlay address) and nothing
else of it. expose opens the host's overlay address to the containers of
the default subnet, or, with SUBNET (an isolated subnet, e.g. 10.33.1.0/24),
gives the host an address in SUBNET and opens that one to SUBNET's
containers. Services bound to 0.0.0.0 then answer them there. The exposure
survives restarts; 'weavewg hide' takes it back.`)
}

func hideCommand() *cli.Command {
	return exposeHideCommand("hide", api.PathHide,
		"close this host to the overlay again (the default subnet, or SUBNET); DNS keeps answering",
		`hide undoes expose for the default subnet, or for SUBNET (whose address of
the host is given back to IPAM). Connections the host opened itself keep
working; containers reach only the host's DNS.`)
}

func exposeHideCommand(name, path, usage, desc string) *cli.Command {
	return &cli.Command{
		Name:        name,
		Usage:       usage,
		Description: desc,
		ArgsUsage:   "[SUBNET]",
		Flags:       []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print the result as JSON"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return fmt.Errorf("%s takes at most one SUBNET, got %d arguments", name, c.NArg())
			}
			var res api.ExposeResult
			if err := newClient(c).do("POST", path, api.ExposeRequest{Subnet: c.Args().First()}, &res); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(res)
			}
			switch {
			case name == "expose" && res.Changed:
				fmt.Printf("exposed: containers of %s reach this host at %s\n", res.Subnet, res.Address)
			case name == "expose":
				fmt.Printf("already exposed: containers of %s reach this host at %s\n", res.Subnet, res.Address)
			case res.Changed:
				fmt.Printf("hidden from %s\n", res.Subnet)
			default:
				fmt.Printf("was not exposed to %s\n", res.Subnet)
			}
			if len(res.Exposed) == 0 {
				fmt.Fprintln(os.Stdout, "the host is hidden from the overlay (DNS answers)")
			}
			return nil
		},
	}
}
