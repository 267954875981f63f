package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/plugin"
	"github.com/dpu-offload/offload/rexec"
	"github.com/dpu-offload/offload/version"
)

// run loads the config, re-adopts persisted containers and serves every
// channel until SIGINT/SIGTERM. Containers keep running when it stops.
func run(c *cli.Context) error {
	cfg, err := loadConfig(c.String("config"), c.IsSet("config"))
	if err != nil {
		return err
	}
	if l := c.String("log-level"); l != "" {
		cfg.LogLevel = l
	}
	if l := c.String("listen"); l != "" {
		cfg.Listen = l
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		return err
	}
	ctx := log.WithLogger(context.Background(), log.L.WithField("daemon", "offload-agent"))
	addr, err := transport.ParseAddress(cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}

	// Before any container exists: their inits must re-parent to us.
	if err := plugin.SetSubreaper(); err != nil {
		return err
	}
	cfg.Runtime.AgentVersion = version.Version
	svc, err := plugin.New(ctx, cfg.Runtime)
	if err != nil {
		return fmt.Errorf("runtime: %w", err)
	}
	var rx *rexec.Server
	if cfg.Rexec != nil && len(cfg.Rexec.Allow) > 0 {
		if rx, err = rexec.NewServer(*cfg.Rexec); err != nil {
			return fmt.Errorf("rexec: %w", err)
		}
	}
	qs, err := newQtfsServer(cfg.Qtfs)
	if err != nil {
		return fmt.Errorf("qtfs: %w", err)
	}

	mux, err := transport.Listen(ctx, addr, cfg.security())
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	ts, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	runtimev1.RegisterAgentService(ts, svc)

	errc := make(chan error, 8)
	serve := func(name string, f func() error) {
		go func() {
			if err := f(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, ttrpc.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	rl, sl, ul := mux.Channel(transport.ChannelRuntime), mux.Channel(transport.ChannelStdio), mux.Channel(transport.ChannelUnpack)
	serve("runtime", func() error { return ts.Serve(ctx, rl) })
	serve("stdio", func() error { return svc.ServeStdio(sl) })
	serve("unpack", func() error { return svc.ServeUnpack(ul) })
	channels := []string{transport.ChannelRuntime, transport.ChannelStdio, transport.ChannelUnpack}
	if rx != nil {
		l := mux.Channel(transport.ChannelRexec)
		serve("rexec", func() error { return rx.Serve(l) })
		channels = append(channels, transport.ChannelRexec)
	}
	if qs != nil {
		l := mux.Channel(transport.ChannelQtfs)
		serve("qtfs", func() error { return qs.Serve(l) })
		channels = append(channels, transport.ChannelQtfs)
	}
	serve("listener", mux.Serve)
	log.G(ctx).WithField("address", addr.String()).WithField("channels", channels).
		WithField("version", version.Version).Info("offload-agent serving")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	select {
	case s := <-sigs:
		log.G(ctx).Infof("%v: shutting down (containers keep running)", s)
		err = nil
	case err = <-errc:
		log.G(ctx).WithError(err).Error("serving failed")
	}
	mux.Close()
	ts.Close()
	if rx != nil {
		rx.Close()
	}
	if qs != nil {
		qs.Close()
	}
	svc.Close()
	return err
}
