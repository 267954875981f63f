package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/containerd/log"
	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/qtfs/client"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

const readyFdEnv = "QTFS_READY_FD"

var mountCommand = &cli.Command{
	Name:      "mount",
	Usage:     "mount a host export (foreground unless --daemon)",
	ArgsUsage: "ADDR EXPORT MOUNTPOINT",
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "cache", Value: "auto", Usage: "auto (1s entry/attr TTL + host-pushed invalidation), strict (no TTL), none (no caching, direct I/O)"},
		&cli.DurationFlag{Name: "ttl", Value: time.Second, Usage: "entry/attribute cache timeout for --cache=auto"},
		&cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "fail calls with EIO when the host is unreachable this long"},
		&cli.IntFlag{Name: "readahead-kb", Value: 16384, Usage: "kernel readahead window of the mount (-1: kernel default)"},
		&cli.IntFlag{Name: "data-conns", Value: 2, Usage: "connections for read/write data besides the control connection"},
		&cli.BoolFlag{Name: "allow-other", Usage: "let other users access the mount"},
		&cli.BoolFlag{Name: "daemon", Usage: "detach once mounted"},
		&cli.StringFlag{Name: "log-file", Usage: "with --daemon: append the daemon's log here (default: discarded)"},
		&cli.BoolFlag{Name: "debug", Usage: "log every FUSE request"},
		&cli.StringFlag{Name: "control-dir", Value: client.DefaultControlDir, Usage: "directory of the per-mount control sockets (qtfs info)"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn, error"},
	}, securityFlags("dpu")...),
	Action: runMount,
}

func runMount(c *cli.Context) error {
	if err := setLogLevel(c); err != nil {
		return err
	}
	if c.NArg() != 3 {
		return errors.New("mount: want ADDR EXPORT MOUNTPOINT")
	}
	addr, err := transport.ParseAddress(c.Args().Get(0))
	if err != nil {
		return err
	}
	sec, err := security(c, "dpu", transport.Security{}, "")
	if err != nil {
		return err
	}
	if c.Bool("daemon") && os.Getenv(readyFdEnv) == "" {
		return daemonize(c.String("log-file"))
	}
	opts := client.MountOptions{
		SessionOptions: client.SessionOptions{
			Dial: func(ctx context.Context) (net.Conn, error) {
				return transport.Dial(ctx, addr, sec, transport.ChannelQtfs)
			},
			Export:    c.Args().Get(1),
			DataConns: c.Int("data-conns"),
			Timeout:   c.Duration("timeout"),
		},
		Mountpoint:  c.Args().Get(2),
		Cache:       client.CacheMode(c.String("cache")),
		TTL:         c.Duration("ttl"),
		AllowOther:  c.Bool("allow-other"),
		ReadAheadKB: c.Int("readahead-kb"),
		Debug:       c.Bool("debug"),
		ControlDir:  c.String("control-dir"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout+10*time.Second)
	m, err := client.NewMount(ctx, opts)
	cancel()
	ready(err)
	if err != nil {
		return err
	}
	log.L.WithField("mountpoint", opts.Mountpoint).WithField("export", opts.Export).Info("qtfs: mounted")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		if err := m.Unmount(); err != nil {
			log.L.WithError(err).Warn("qtfs: unmount (busy?), detaching lazily")
			unix.Unmount(opts.Mountpoint, unix.MNT_DETACH)
		}
	}()
	m.Wait()
	return nil
}

// daemonize re-runs this command detached and returns once the child reports
// that the mount is up (or why it failed).
func daemonize(logFile string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyFdEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if logFile != "" {
		lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("log file: %w", err)
		}
		defer lf.Close()
		cmd.Stdout, cmd.Stderr = lf, lf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "ok" {
		fmt.Println(cmd.Process.Pid)
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	if line == "" {
		line = "daemon exited before mounting"
	}
	return errors.New(line)
}

// ready tells a waiting parent (--daemon) how the mount went.
func ready(err error) {
	fdStr := os.Getenv(readyFdEnv)
	if fdStr == "" {
		return
	}
	os.Unsetenv(readyFdEnv)
	fd, _ := strconv.Atoi(fdStr)
	f := os.NewFile(uintptr(fd), "ready")
	if f == nil {
		return
	}
	if err != nil {
		fmt.Fprintln(f, err.Error())
	} else {
		fmt.Fprintln(f, "ok")
	}
	f.Close()
}

var umountCommand = &cli.Command{
	Name:      "umount",
	Usage:     "unmount a qtfs mount",
	ArgsUsage: "MOUNTPOINT",
	Flags:     []cli.Flag{&cli.BoolFlag{Name: "lazy", Aliases: []string{"l"}, Usage: "detach even if busy"}},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return errors.New("umount: want MOUNTPOINT")
		}
		flags := 0
		if c.Bool("lazy") {
			flags = unix.MNT_DETACH
		}
		if err := unix.Unmount(c.Args().First(), flags); err != nil {
			return fmt.Errorf("umount %s: %w", c.Args().First(), err)
		}
		return nil
	},
}

var infoCommand = &cli.Command{
	Name:      "info",
	Usage:     "show a mount's connection state, in-flight requests and per-operation counters",
	ArgsUsage: "MOUNTPOINT",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		&cli.StringFlag{Name: "control-dir", Value: client.DefaultControlDir, Usage: "directory of the per-mount control sockets"},
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return errors.New("info: want MOUNTPOINT")
		}
		mi, err := client.QueryInfo(c.String("control-dir"), c.Args().First())
		if err != nil {
			return err
		}
		if c.Bool("json") {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(mi)
		}
		state := "connected"
		if !mi.Connected {
			state = "DISCONNECTED (reconnecting)"
		}
		fmt.Printf("mountpoint:  %s\nexport:      %s\npid:         %d\ncache:       %s\nstate:       %s since %s\n",
			mi.Mountpoint, mi.Export, mi.Pid, mi.Cache, state, mi.Since.Format(time.RFC3339))
		fmt.Printf("connections: %d\nreconnects:  %d\nepoch:       %d\nread-only:   %v\nin-flight:   %d\nprefetched:  %d lookups answered from directory listings\n",
			mi.Conns, mi.Reconnects, mi.Epoch, mi.ReadOnly, mi.InFlight, mi.PrefetchHits)
		if mi.LastError != "" {
			fmt.Printf("last error:  %s\n", mi.LastError)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "\nOP\tCOUNT\tERRORS\tAVG\tMAX\t")
		for _, o := range mi.Ops {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t\n", o.Op, o.Count, o.Errors, o.AvgTime, o.MaxTime)
		}
		return tw.Flush()
	},
}
