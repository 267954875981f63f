package main

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/dpu-offload/offload/rexec"
	"github.com/dpu-offload/offload/rexec/wrappers"
)

// wrapCommand is what the wrapper scripts of contrib/wrappers exec. The
// server address and security come from $REXEC_ADDR / $REXEC_CONFIG or the
// default client config, as for a plain rexec call.
var wrapCommand = &cli.Command{
	Name:  "wrap",
	Usage: "DPU-side wrapper logic behind the installed CNI, mount, umount and modprobe wrappers",
	Subcommands: []*cli.Command{
		{Name: "cni", ArgsUsage: "PLUGIN", SkipFlagParsing: true, Usage: "run CNI plugin PLUGIN on the host", Action: func(c *cli.Context) error {
			r, err := wrapRunner(c)
			if err != nil {
				return cniFailure(err)
			}
			if c.NArg() < 1 {
				return cniFailure(fmt.Errorf("wrap cni: want the plugin name"))
			}
			os.Exit(r.CNI(context.Background(), c.Args().First()))
			return nil
		}},
		{Name: "mount", SkipFlagParsing: true, Usage: "mount on the host when the target is shared, else locally", Action: func(c *cli.Context) error {
			return wrapMount(c, "mount", (*wrappers.Runner).Mount, func(w rexec.WrapperConfig) string { return w.LocalMount })
		}},
		{Name: "umount", SkipFlagParsing: true, Usage: "umount on the host when the target is shared, else locally", Action: func(c *cli.Context) error {
			return wrapMount(c, "umount", (*wrappers.Runner).Umount, func(w rexec.WrapperConfig) string { return w.LocalUmount })
		}},
		{Name: "modprobe", SkipFlagParsing: true, Usage: "run modprobe on the host", Action: func(c *cli.Context) error {
			r, err := wrapRunner(c)
			if err != nil {
				return err
			}
			os.Exit(r.Modprobe(context.Background(), c.Args().Slice()))
			return nil
		}},
	},
}

func wrapRunner(c *cli.Context) (*wrappers.Runner, error) {
	dial, cfg, err := dialerFromFlags(c)
	if err != nil {
		return nil, err
	}
	cwd, _ := os.Getwd()
	client := rexec.NewClient(dial)
	return &wrappers.Runner{
		Config:  cfg.Wrappers,
		Run:     func(ctx context.Context, cmd *rexec.Cmd) int { return runRemote(ctx, client, cmd) },
		Environ: os.Environ(),
		Cwd:     cwd,
		Stdin:   os.Stdin,
		Stdout:  os.Stdout,
		Stderr:  os.Stderr,
	}, nil
}

func wrapMount(c *cli.Context, name string, run func(*wrappers.Runner, context.Context, []string) (int, bool), local func(rexec.WrapperConfig) string) error {
	args := c.Args().Slice()
	cfg, err := rexec.LoadClientConfig(c.String("config"), c.IsSet("config"))
	if err != nil {
		return err
	}
	r := &wrappers.Runner{Config: cfg.Wrappers}
	if t, ok := targetOf(name, args); ok {
		cwd, _ := os.Getwd()
		if wrappers.IsShared(t, cwd, cfg.Wrappers.SharedPrefixes) {
			if r, err = wrapRunner(c); err != nil {
				return err
			}
			code, _ := run(r, context.Background(), args)
			os.Exit(code)
		}
	}
	bin := local(cfg.Wrappers)
	return fmt.Errorf("exec %s: %w", bin, syscall.Exec(bin, append([]string{name}, args...), os.Environ()))
}

func targetOf(name string, args []string) (string, bool) {
	if name == "umount" {
		return wrappers.UmountTarget(args)
	}
	return wrappers.MountTarget(args)
}

// cniFailure reports a wrapper set-up error as a CNI error result.
func cniFailure(err error) error {
	fmt.Printf(`{"cniVersion":"1.0.0","code":999,"msg":%q}`+"\n", "rexec cni wrapper: "+err.Error())
	os.Exit(1)
	return nil
}
