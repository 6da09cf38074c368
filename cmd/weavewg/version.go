package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/types/api"
)

// Stamped at build time by `make build` and `make release`:
//
//	-ldflags "-X main.version=$(git describe) -X main.commit=… -X main.date=…"
var (
	version = ""
	commit  = ""
	date    = ""
)

// buildInfo is what this binary knows of its build: the stamp, else what
// the Go toolchain recorded (module version, VCS revision and time).
func buildInfo() api.Build {
	b := api.Build{Version: version, Commit: commit, Date: date,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && b.Commit == "":
				b.Commit = s.Value
			case s.Key == "vcs.time" && b.Date == "":
				b.Date = s.Value
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	return b
}

func versionString() string { return buildInfo().Version }

// versionLine is the one-line form: version, short commit, date.
func versionLine(b api.Build) string {
	s := b.Version
	if b.Commit != "" {
		c := b.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		s += " (commit " + c
		if b.Date != "" {
			s += ", built " + b.Date
		}
		s += ")"
	}
	return s
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, commit and build date of this binary",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print them as JSON"}},
		Action: func(c *cli.Context) error {
			b := buildInfo()
			if c.Bool("json") {
				return printJSON(b)
			}
			fmt.Printf("weavewg %s\n", versionLine(b))
			fmt.Printf("%s %s\n", b.GoVersion, b.Platform)
			return nil
		},
	}
}
