package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/weavewg/weavewg/cni"
	"github.com/weavewg/weavewg/types/atomicfile"
)

func cniCommand() *cli.Command {
	return &cli.Command{
		Name:  "cni",
		Usage: "weavewg as a CNI plugin (Kubernetes, Podman, Nomad)",
		Description: `This binary is also weavewg's CNI plugin: run with CNI_COMMAND set (as
container runtimes run plugins) it speaks CNI 1.1 and asks the local daemon
to attach, detach and garbage-collect. 'weavewg cni install' puts it where
runtimes look and writes a network configuration for it.`,
		Subcommands: []*cli.Command{cniInstallCommand()},
	}
}

func cniInstallCommand() *cli.Command {
	return &cli.Command{
		Name:  "install",
		Usage: "install this binary as the CNI plugin weavewg and write its network configuration",
		Description: `Copies (or with --link, links) this binary to BIN_DIR/weavewg and writes
CONF_DIR/10-NAME.conflist naming it, with the daemon's API socket. Runtimes
then attach pods to the network NAME through the running weavewg daemon; pod
names (K8S_POD_NAME) are registered in weave.local. Re-running it replaces
both files.`,
		Flags: []cli.Flag{
			apiSocketFlag(),
			&cli.StringFlag{Name: "bin-dir", Value: "/opt/cni/bin", Usage: "the runtime's CNI plugin directory"},
			&cli.StringFlag{Name: "conf-dir", Value: "/etc/cni/net.d", Usage: "the runtime's CNI network configuration directory"},
			&cli.StringFlag{Name: "network-name", Value: "weavewg", Usage: "the CNI network's name"},
			&cli.StringFlag{Name: "cni-version", Value: "1.1.0", Usage: "the conflist's cniVersion (1.0.0 for runtimes whose CNI library predates 1.1, e.g. Podman 4)"},
			&cli.BoolFlag{Name: "link", Usage: "symlink the plugin to this binary instead of copying it"},
			&cli.DurationFlag{Name: "wait", Usage: "how long ADD waits for address space while the host joins (default: the daemon's, 30s)"},
		},
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			if self, err = filepath.EvalSymlinks(self); err != nil {
				return err
			}
			ok := false
			for _, v := range cni.SupportedVersions {
				ok = ok || v == c.String("cni-version")
			}
			if !ok {
				return fmt.Errorf("--cni-version %s: the plugin speaks %v", c.String("cni-version"), cni.SupportedVersions)
			}
			bin := filepath.Join(c.String("bin-dir"), "weavewg")
			if err := installBinary(self, bin, c.Bool("link")); err != nil {
				return err
			}
			plugin := map[string]any{"type": "weavewg", "api_socket": c.String("api-socket")}
			if w := c.Duration("wait"); w > 0 {
				plugin["wait_seconds"] = w.Seconds()
			}
			list := map[string]any{
				"cniVersion": c.String("cni-version"),
				"name":       c.String("network-name"),
				"plugins":    []any{plugin},
			}
			b, _ := json.MarshalIndent(list, "", "  ")
			conf := filepath.Join(c.String("conf-dir"), "10-"+c.String("network-name")+".conflist")
			if err := os.MkdirAll(c.String("conf-dir"), 0o755); err != nil {
				return err
			}
			if err := atomicfile.Write(conf, append(b, '\n'), 0o644); err != nil {
				return fmt.Errorf("writing %s: %w", conf, err)
			}
			fmt.Printf("installed the CNI plugin %s and the network %q in %s\n", bin, c.String("network-name"), conf)
			return nil
		},
	}
}

// installBinary puts self at dst, by copy (written whole, then renamed, so a
// runtime never runs half a binary) or symlink.
func installBinary(self, dst string, link bool) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if cur, err := filepath.EvalSymlinks(dst); err == nil && cur == self && !link {
		return nil // installed already: this is it
	}
	if link {
		tmp := dst + ".weavewg-tmp"
		os.Remove(tmp)
		if err := os.Symlink(self, tmp); err != nil {
			return err
		}
		return os.Rename(tmp, dst)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(dst, b, 0o755); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("installing %s: %w (run as root)", dst, err)
		}
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	return nil
}
