package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/containerd/log"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/rexec"
)

var serveCommand = &cli.Command{
	Name:  "serve",
	Usage: "serve rexec on its own listener (offload-agent embeds the same server)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "listen", Usage: "address to listen on (unix:///path, tcp://IP:PORT, vsock://CID:PORT); overrides the config's listen"},
		&cli.StringFlag{Name: "config", Usage: "serve config file (listen, tls_dir, [security], [[rexec.allow]])"},
		&cli.StringSliceFlag{Name: "allow", Usage: "allow this absolute binary with any arguments (repeatable; added to the config's rules)"},
		&cli.StringFlag{Name: "tls-dir", Usage: "directory from offloadctl certs generate (ca.pem, host.pem, host-key.pem)"},
		&cli.BoolFlag{Name: "insecure", Usage: "accept plain TCP without authentication (logged loudly)"},
		&cli.UintSliceFlag{Name: "allowed-cid", Usage: "vsock peer CID allowed to connect (repeatable)"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level (debug, info, warn, error)"},
	},
	Action: serveAction,
}

func serveAction(c *cli.Context) error {
	if err := log.SetLevel(c.String("log-level")); err != nil {
		return err
	}
	cfg := &rexec.ServeConfig{}
	if p := c.String("config"); p != "" {
		var err error
		if cfg, err = rexec.LoadServeConfig(p); err != nil {
			return err
		}
	}
	if l := c.String("listen"); l != "" {
		cfg.Listen = l
	}
	if d := c.String("tls-dir"); d != "" {
		cfg.TLSDir = d
	}
	if c.Bool("insecure") {
		cfg.Security.Insecure = true
	}
	for _, cid := range c.UintSlice("allowed-cid") {
		cfg.Security.AllowedCIDs = append(cfg.Security.AllowedCIDs, uint32(cid))
	}
	for _, p := range c.StringSlice("allow") {
		cfg.Rexec.Allow = append(cfg.Rexec.Allow, rexec.AllowRule{Path: p})
	}
	if cfg.Listen == "" {
		return errors.New("serve: no address: use --listen or listen in the config")
	}
	if len(cfg.Rexec.Allow) == 0 {
		return errors.New("serve: nothing allowed: use --allow or [[rexec.allow]] in --config")
	}
	addr, err := transport.ParseAddress(cfg.Listen)
	if err != nil {
		return err
	}
	srv, err := rexec.NewServer(cfg.Rexec)
	if err != nil {
		return err
	}
	ctx := context.Background()
	mux, err := transport.Listen(ctx, addr, cfg.SecurityConfig())
	if err != nil {
		return fmt.Errorf("serve: listen %s: %w", cfg.Listen, err)
	}
	l := mux.Channel(transport.ChannelRexec)
	go func() {
		if err := mux.Serve(); err != nil {
			log.G(ctx).WithError(err).Error("rexec serve: listener failed")
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	go func() {
		s := <-sigs
		log.G(ctx).Infof("rexec serve: %v, shutting down", s)
		// The server first, so that Serve sees its own Close rather than
		// a failing listener.
		srv.Close()
		mux.Close()
	}()
	log.G(ctx).WithField("address", addr.String()).WithField("rules", len(cfg.Rexec.Allow)).Info("rexec serve: listening")
	err = srv.Serve(l)
	srv.Close()
	mux.Close()
	return err
}
