package main

import (
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func dnsCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:      "dns-add",
			Usage:     "make NAME.weave.local resolve to the addresses, on every host",
			ArgsUsage: "IP [IP ...] NAME",
			Flags:     []cli.Flag{apiSocketFlag()},
			Action: func(c *cli.Context) error {
				ips, name, err := splitIPsAndName(c.Args().Slice())
				if err != nil {
					return err
				}
				if name == "" || len(ips) == 0 {
					return fmt.Errorf("dns-add needs at least one address and a name: IP [IP ...] NAME")
				}
				return newClient(c).do("POST", api.PathDNSAdd, api.DNSRequest{Name: name, Addresses: ips}, nil)
			},
		},
		{
			Name:      "dns-remove",
			Usage:     "withdraw names this host added: all names of the addresses, or only NAME",
			ArgsUsage: "IP [IP ...] [NAME] | NAME",
			Flags:     []cli.Flag{apiSocketFlag()},
			Action: func(c *cli.Context) error {
				ips, name, err := splitIPsAndName(c.Args().Slice())
				if err != nil {
					return err
				}
				if name == "" && len(ips) == 0 {
					return fmt.Errorf("dns-remove needs addresses, a name, or both")
				}
				var res api.DNSRemoved
				if err := newClient(c).do("POST", api.PathDNSRemove, api.DNSRequest{Name: name, Addresses: ips}, &res); err != nil {
					return err
				}
				fmt.Printf("removed %d\n", res.Removed)
				return nil
			},
		},
		{
			Name:      "dns-lookup",
			Usage:     "print the addresses this host's DNS answers for NAME",
			ArgsUsage: "NAME",
			Flags:     []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
			Action: func(c *cli.Context) error {
				name, err := oneArg(c, "NAME")
				if err != nil {
					return err
				}
				var res api.DNSLookup
				if err := newClient(c).do("GET", api.PathDNSLookup+"?name="+url.QueryEscape(name), nil, &res); err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(res)
				}
				if len(res.Addresses) == 0 {
					return fmt.Errorf("%s: no such name", name)
				}
				for _, a := range res.Addresses {
					fmt.Println(a)
				}
				return nil
			},
		},
	}
}

// splitIPsAndName reads "IP... [NAME]": every argument that parses as an
// address is one; at most one other argument, the last, is the name.
func splitIPsAndName(args []string) (ips []string, name string, err error) {
	for i, a := range args {
		if _, perr := netip.ParseAddr(a); perr == nil {
			ips = append(ips, a)
			continue
		}
		if i != len(args)-1 {
			return nil, "", fmt.Errorf("%q is not an IP address (the name comes last)", a)
		}
		name = a
	}
	return ips, name, nil
}

func statusDNSCommand() *cli.Command {
	return &cli.Command{
		Name:  "dns",
		Usage: "list the names in weave.local: name, address, owning peer",
		Flags: []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			var st api.DNSStatus
			if err := newClient(c).do("GET", api.PathDNS, nil, &st); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(st)
			}
			showDNS(os.Stdout, st)
			return nil
		},
	}
}

func showDNS(w io.Writer, st api.DNSStatus) {
	if !st.Enabled {
		fmt.Fprintln(w, "DNS is off on this host (--no-dns)")
		return
	}
	fmt.Fprintf(w, "domain %s, answering on %s, TTL %ds, %d entries\n", st.Domain, st.Listen, st.TTL, len(st.Entries))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, e := range st.Entries {
		mark := ""
		if !e.Reachable {
			mark = "unreachable (not answered)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s(%s)\t%s\n", e.Name, e.Address, e.Peer, e.Nickname, mark)
	}
	tw.Flush()
}
