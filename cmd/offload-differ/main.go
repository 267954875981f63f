// Command offload-differ is a containerd diff plugin on the DPU: layers
// whose snapshot lives on the qtfs share of the host's snapshot root are
// extracted by offload-agent on the host instead of file by file through
// the share. docs/offload-differ.md is its manual.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/containerd/log"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/dpu-offload/offload/shim"
	"github.com/dpu-offload/offload/shim/differ"
	"github.com/dpu-offload/offload/version"
)

func main() {
	app := &cli.App{
		Name:    "offload-differ",
		Usage:   "containerd diff plugin (proxy_plugins type \"diff\") that extracts shared snapshots' layers on the host",
		Version: version.Version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Value: "/run/offload/differ.sock", Usage: "unix socket to serve containerd's diff API on"},
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: shim.DefaultConfigPath, Usage: "the shim's config: agent_address, [tls], [timeouts]"},
			&cli.StringFlag{Name: "content-root", Value: differ.DefaultContentRoot, Usage: "the DPU containerd's content store directory"},
			&cli.StringSliceFlag{Name: "shared-prefix", Value: cli.NewStringSlice("/var/lib/offload/snapshots"), Usage: "a DPU directory that is a qtfs share of the host's identical path (repeatable)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "trace, debug, info, warn, error"},
		},
		Action: run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "offload-differ:", err)
		os.Exit(1)
	}
}

func run(c *cli.Context) error {
	if err := log.SetLevel(c.String("log-level")); err != nil {
		return err
	}
	agent, err := shim.LoadConfigFile(c.String("config"))
	if err != nil {
		return err
	}
	svc, err := differ.New(differ.Config{Agent: agent, ContentRoot: c.String("content-root"), SharedPrefixes: c.StringSlice("shared-prefix")})
	if err != nil {
		return err
	}
	l, err := differ.Listen(c.String("address"))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer l.Close()
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	ctx = log.WithLogger(ctx, log.L.WithField("daemon", "offload-differ"))
	return svc.Serve(ctx, l)
}
