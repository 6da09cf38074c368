package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:  "report",
		Usage: "write one JSON document for diagnosis: status, peers, connections, ring, DNS table, counters, recent warnings, versions",
		Description: `Asks the running daemon for everything it knows and writes it as one JSON
document (like Weave Net's 'weave report'), to attach to a bug report or
read with jq, e.g. 'weavewg report | jq .recent_warnings'. It holds no
secret: no private key, network secret, password or join token.`,
		Flags: []cli.Flag{
			apiSocketFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to this file instead of standard output"},
		},
		Action: func(c *cli.Context) error {
			var r api.Report
			if err := newClient(c).do("GET", api.PathReport, nil, &r); err != nil {
				return err
			}
			b := buildInfo()
			r.Versions.CLI = &b
			var w io.Writer = os.Stdout
			if path := c.String("output"); path != "" {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			if err := enc.Encode(r); err != nil {
				return fmt.Errorf("writing the report: %w", err)
			}
			return nil
		},
	}
}
