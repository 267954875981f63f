// Command build writes the testbed's OCI image archives (see package
// github.com/dpu-offload/offload/tests/images) into a cache directory and
// prints one line per image: the reference and the archive's path.
//
//	go run ./tests/images/build [-out DIR] [-busybox /bin/busybox] [busybox|big ...]
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dpu-offload/offload/tests/images"
)

func defaultOut() string {
	cache := os.Getenv("DPU_OFFLOAD_CACHE")
	if cache == "" {
		cache = "/var/cache/dpu-offload"
	}
	return filepath.Join(cache, "images")
}

func main() {
	app := &cli.App{
		Name:      "build",
		Usage:     "build the testbed's OCI image archives offline (cached by input hash)",
		ArgsUsage: "[busybox|big ...] (default: all)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Value: defaultOut(), Usage: "cache directory for the archives"},
			&cli.StringFlag{Name: "busybox", Value: images.DefaultBusybox, Usage: "static busybox binary"},
		},
		Action: func(c *cli.Context) error {
			names := c.Args().Slice()
			if len(names) == 0 {
				names = []string{"busybox", "big"}
			}
			for _, n := range names {
				var (
					img images.Image
					err error
				)
				switch n {
				case "busybox":
					img, err = images.Busybox(c.String("busybox"))
				case "big":
					img, err = images.Big(c.String("busybox"), images.DefaultBig)
				default:
					return fmt.Errorf("unknown image %q (want busybox or big)", n)
				}
				if err != nil {
					return err
				}
				t0 := time.Now()
				p, err := images.Build(c.String("out"), img)
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "image %s ready in %.1fs\n", img.Ref, time.Since(t0).Seconds())
				fmt.Printf("%s %s\n", img.Ref, p)
			}
			return nil
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
}
