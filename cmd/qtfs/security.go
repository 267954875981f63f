package main

import (
	"errors"

	"github.com/containerd/log"
	"github.com/dpu-offload/offload/api/transport"
	"github.com/urfave/cli/v2"
)

func securityFlags(side string) []cli.Flag {
	files := "ca.pem, host.pem, host-key.pem"
	if side == "dpu" {
		files = "ca.pem, dpu.pem, dpu-key.pem"
	}
	return []cli.Flag{
		&cli.StringFlag{Name: "tls-dir", Usage: "directory from `offloadctl certs generate` (" + files + ")"},
		&cli.StringFlag{Name: "ca", Usage: "CA certificate (mTLS; instead of --tls-dir)"},
		&cli.StringFlag{Name: "cert", Usage: "own certificate (mTLS; instead of --tls-dir)"},
		&cli.StringFlag{Name: "key", Usage: "own private key (mTLS; instead of --tls-dir)"},
		&cli.BoolFlag{Name: "insecure", Usage: "plain TCP without authentication (logged loudly)"},
	}
}

// security builds transport settings from the TLS flags; base holds values
// from a config file, flags override them.
func security(c *cli.Context, side string, base transport.Security, tlsDir string) (transport.Security, error) {
	sec := base
	if d := c.String("tls-dir"); d != "" {
		tlsDir = d
	}
	if tlsDir != "" {
		s := transport.HostSecurity(tlsDir)
		if side == "dpu" {
			s = transport.DPUSecurity(tlsDir)
		}
		sec.CAFile, sec.CertFile, sec.KeyFile = s.CAFile, s.CertFile, s.KeyFile
	}
	for name, dst := range map[string]*string{"ca": &sec.CAFile, "cert": &sec.CertFile, "key": &sec.KeyFile} {
		if v := c.String(name); v != "" {
			if tlsDir != "" {
				return sec, errors.New("use either --tls-dir or --ca/--cert/--key")
			}
			*dst = v
		}
	}
	if c.Bool("insecure") {
		sec.Insecure = true
		log.L.Warn("qtfs: --insecure: plain TCP, peers are NOT authenticated and traffic is NOT encrypted")
	}
	return sec, nil
}

func setLogLevel(c *cli.Context) error {
	if l := c.String("log-level"); l != "" {
		return log.SetLevel(l)
	}
	return nil
}
