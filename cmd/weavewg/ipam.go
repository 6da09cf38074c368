package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func statusIPAMCommand() *cli.Command {
	return &cli.Command{
		Name:  "ipam",
		Usage: "show who owns which part of the address range, and how much is in use",
		Flags: []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			var st api.IPAMStatus
			if err := newClient(c).do("GET", api.PathIPAM, nil, &st); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(st)
			}
			showIPAM(os.Stdout, st)
			return nil
		},
	}
}

func showIPAM(w io.Writer, st api.IPAMStatus) {
	fmt.Fprintf(w, "range %s", st.Range)
	if st.Network != "" {
		fmt.Fprintf(w, ", network %s", st.Network)
	}
	fmt.Fprintf(w, ", %d allocated here\n", st.Allocated)
	if st.Network == "" {
		fmt.Fprintln(w, "waiting for the address ring from a peer (not connected to the network yet?)")
	}
	if st.Waiting {
		fmt.Fprintln(w, "waiting for a peer to grant address space")
	}
	if st.Error != "" {
		fmt.Fprintln(w, "error:", st.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, p := range st.Peers {
		mark := ""
		switch {
		case p.Self:
			mark = "(this peer)"
		case !p.Reachable:
			mark = "unreachable!"
		}
		fmt.Fprintf(tw, "%s(%s)\t%d IPs (%.1f%% of total) - used: %d, free: %d\t%s\t%s\n",
			p.Peer, p.Nickname, p.Size, p.Percent, p.InUse, p.Free, strings.Join(p.Ranges, " "), mark)
	}
	tw.Flush()
	for _, t := range st.Transfers {
		state := t.State
		if state == "claimed" {
			state = "claimed done by its issuer, not confirmed by this peer's vote (ignored)"
		}
		fmt.Fprintf(w, "rmpeer %s → %s: %s\n", t.Dead, t.Issuer, state)
	}
}

func psCommand() *cli.Command {
	return &cli.Command{
		Name:  "ps",
		Usage: "list the attachments on this host (weavewg attach, Docker, CNI): name, address, origin, namespace",
		Flags: []cli.Flag{apiSocketFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			var as []api.Attachment
			if err := newClient(c).do("GET", api.PathPS, nil, &as); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(as)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADDRESS\tORIGIN\tPEER\tHOST VETH\tNAMESPACE")
			for _, a := range as {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", orDash(a.Name), a.IP, orDash(a.Origin), a.Peer, orDash(a.HostVeth), orDash(a.Netns))
			}
			return tw.Flush()
		},
	}
}

func rmpeerCommand() *cli.Command {
	return &cli.Command{
		Name:      "rmpeer",
		Usage:     "take over the address space of a peer that is gone for good",
		ArgsUsage: "PEER_NAME|NICKNAME|PUBLIC_KEY",
		Description: `Hands the dead peer's ranges to this peer. Only for peers that will not come
back: a returning peer would find its space owned by another. Running rmpeer
for the same peer on two hosts at once is safe: exactly one of them gets it.`,
		Flags: []cli.Flag{apiSocketFlag()},
		Action: func(c *cli.Context) error {
			peer, err := oneArg(c, "PEER_NAME|NICKNAME|PUBLIC_KEY")
			if err != nil {
				return err
			}
			var res api.RmpeerResult
			if err := newClient(c).do("POST", api.PathRmpeer, api.RmpeerRequest{Peer: peer}, &res); err != nil {
				return err
			}
			fmt.Printf("taking over the address space of %s (see weavewg status ipam)\n", res.Peer)
			return nil
		},
	}
}
