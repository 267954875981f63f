package main

import (
	"fmt"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/urfave/cli/v2"
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "certs",
		Usage: "create the mTLS certificates for the host/DPU link",
		Subcommands: []*cli.Command{{
			Name:      "generate",
			Usage:     "write a new CA and host and DPU certificates into DIR",
			ArgsUsage: "DIR",
			Flags: []cli.Flag{
				&cli.StringSliceFlag{
					Name:     "host",
					Usage:    "IP address or DNS name the DPU dials the host by (repeatable)",
					Required: true,
				},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("certs generate: want exactly one DIR, got %d arguments", c.NArg())
				}
				dir := c.Args().First()
				if err := transport.GenerateCerts(dir, c.StringSlice("host")); err != nil {
					return err
				}
				fmt.Printf("wrote %s, %s (host side) and %s, %s (DPU side) with CA %s in %s\n",
					transport.HostCertName, transport.HostKeyName,
					transport.DPUCertFileName, transport.DPUKeyFileName, transport.CAFileName, dir)
				return nil
			},
		}},
	})
}
