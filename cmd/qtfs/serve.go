package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/log"
	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/qtfs/server"
	"github.com/pelletier/go-toml/v2"
	"github.com/urfave/cli/v2"
)

// serveConfig is the file read by `qtfs serve --config`.
type serveConfig struct {
	Listen   string             `toml:"listen"`
	TLSDir   string             `toml:"tls_dir"`
	Security transport.Security `toml:"security"`
	Qtfs     server.Config      `toml:"qtfs"`
}

var serveCommand = &cli.Command{
	Name:  "serve",
	Usage: "serve host directories to qtfs clients",
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "listen", Usage: "address (unix:///path.sock, tcp://IP:PORT, vsock://CID:PORT); overrides the config's listen"},
		&cli.StringSliceFlag{Name: "export", Usage: "NAME=/abs/dir[:ro][:dev] (repeatable): ro = read-only, dev = allow mknod of devices"},
		&cli.StringFlag{Name: "config", Usage: "TOML file: listen, tls_dir, [security], [qtfs] with [[qtfs.export]] name/path/read_only/allow_devices"},
		&cli.UintSliceFlag{Name: "allowed-cid", Usage: "vsock peer CID allowed to connect (repeatable)"},
		&cli.IntFlag{Name: "session-grace", Usage: "seconds a disconnected client's handles are kept for its reconnect", Value: 60},
		&cli.BoolFlag{Name: "no-notify", Usage: "do not push host changes (inotify) to clients"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn, error"},
	}, securityFlags("host")...),
	Action: runServe,
}

// parseExport parses NAME=/abs/dir[:ro][:dev].
func parseExport(s string) (server.Export, error) {
	name, path, ok := strings.Cut(s, "=")
	if !ok || name == "" || path == "" {
		return server.Export{}, fmt.Errorf("--export %q: want NAME=/abs/dir[:ro]", s)
	}
	e := server.Export{Name: name}
	for {
		i := strings.LastIndex(path, ":")
		if i < 0 {
			break
		}
		opt := path[i+1:]
		if opt == "ro" {
			e.ReadOnly = true
		} else if opt == "dev" {
			e.AllowDevices = true
		} else if opt == "rw" {
		} else {
			break
		}
		path = path[:i]
	}
	if !filepath.IsAbs(path) {
		return server.Export{}, fmt.Errorf("--export %q: %q is not an absolute path", s, path)
	}
	e.Path = filepath.Clean(path)
	return e, nil
}

func runServe(c *cli.Context) error {
	if err := setLogLevel(c); err != nil {
		return err
	}
	var cfg serveConfig
	if p := c.String("config"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		dec := toml.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return fmt.Errorf("config %s: %w", p, err)
		}
	}
	if l := c.String("listen"); l != "" {
		cfg.Listen = l
	}
	for _, s := range c.StringSlice("export") {
		e, err := parseExport(s)
		if err != nil {
			return err
		}
		cfg.Qtfs.Exports = append(cfg.Qtfs.Exports, e)
	}
	if c.IsSet("session-grace") || cfg.Qtfs.SessionGraceSeconds == 0 {
		cfg.Qtfs.SessionGraceSeconds = c.Int("session-grace")
	}
	if c.Bool("no-notify") {
		cfg.Qtfs.DisableNotify = true
	}
	if cfg.Listen == "" {
		return errors.New("serve: no address: use --listen or listen in --config")
	}
	if len(cfg.Qtfs.Exports) == 0 {
		return errors.New("serve: nothing exported: use --export or [[qtfs.export]] in --config")
	}
	sec, err := security(c, "host", cfg.Security, cfg.TLSDir)
	if err != nil {
		return err
	}
	for _, cid := range c.UintSlice("allowed-cid") {
		sec.AllowedCIDs = append(sec.AllowedCIDs, uint32(cid))
	}
	addr, err := transport.ParseAddress(cfg.Listen)
	if err != nil {
		return err
	}
	srv, err := server.New(cfg.Qtfs)
	if err != nil {
		return err
	}
	defer srv.Close()
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	mux, err := transport.Listen(ctx, addr, sec)
	if err != nil {
		return err
	}
	l := mux.Channel(transport.ChannelQtfs)
	errc := make(chan error, 2)
	go func() { errc <- mux.Serve() }()
	go func() { errc <- srv.Serve(l) }()
	for _, e := range cfg.Qtfs.Exports {
		log.L.WithField("export", e.Name).WithField("path", e.Path).WithField("read_only", e.ReadOnly).Info("qtfs: exporting")
	}
	log.L.WithField("listen", addr.String()).Info("qtfs: serving")
	select {
	case <-ctx.Done():
		log.L.Info("qtfs: shutting down")
	case err = <-errc:
	}
	mux.Close()
	srv.Close()
	return err
}
