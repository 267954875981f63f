package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/dpu-offload/offload/rexec/wrappers"
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "wrappers",
		Usage: "manage the rexec wrappers (CNI plugins, mount, umount, modprobe) on the DPU",
		Subcommands: []*cli.Command{{
			Name:      "install",
			Usage:     "install mount, umount and modprobe wrappers into DIR and CNI plugin wrappers into --cni-dir",
			ArgsUsage: "DIR",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "cni-dir", Usage: "directory for the CNI plugin wrappers (containerd's CNI bin_dir); empty: DIR/cni"},
				&cli.StringSliceFlag{Name: "cni-plugin", Usage: "CNI plugin to wrap (repeatable); default: every plugin of Debian's containernetworking-plugins"},
				&cli.StringFlag{Name: "rexec", Usage: "absolute path of the rexec binary the wrappers run; default: rexec beside offloadctl, else on PATH"},
				&cli.BoolFlag{Name: "force", Usage: "replace existing files that are not wrappers"},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("wrappers install: want exactly one DIR, got %d arguments", c.NArg())
				}
				dir, err := filepath.Abs(c.Args().First())
				if err != nil {
					return err
				}
				rexecPath := c.String("rexec")
				if rexecPath == "" {
					if rexecPath, err = findRexec(); err != nil {
						return err
					}
				}
				cniDir := c.String("cni-dir")
				if cniDir == "" {
					cniDir = filepath.Join(dir, "cni")
				}
				plugins := c.StringSlice("cni-plugin")
				if len(plugins) == 0 {
					plugins = wrappers.DefaultCNIPlugins
				}
				written, err := wrappers.Install(wrappers.InstallOptions{
					Dir: dir, CNIDir: cniDir, CNIPlugins: plugins, Rexec: rexecPath, Force: c.Bool("force"),
				})
				for _, p := range written {
					fmt.Println(p)
				}
				return err
			},
		}},
	})
}

// findRexec looks for rexec beside this binary, then on PATH.
func findRexec() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "rexec")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath("rexec")
	if err != nil {
		return "", fmt.Errorf("wrappers install: rexec not found beside offloadctl or on PATH; use --rexec")
	}
	return filepath.Abs(p)
}
