package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/containerd/console"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/rexec"
)

// exitTimedOut is the exit code when the server ended the process for its
// --timeout, as timeout(1) reports it.
const exitTimedOut = 124

var clientFlags = []cli.Flag{
	&cli.StringFlag{Name: "config", Usage: "client config file", EnvVars: []string{"REXEC_CONFIG"}, Value: rexec.DefaultClientConfigPath},
	&cli.StringFlag{Name: "addr", Usage: "server address (unix:///path, tcp://IP:PORT, vsock://CID:PORT); default $REXEC_ADDR, then the config's addr", EnvVars: []string{"REXEC_ADDR"}},
	&cli.StringFlag{Name: "tls-dir", Usage: "directory from offloadctl certs generate (ca.pem, dpu.pem, dpu-key.pem)", EnvVars: []string{"REXEC_TLS_DIR"}},
	&cli.BoolFlag{Name: "insecure", Usage: "plain TCP without authentication (logged loudly)"},
	&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "KEY=VALUE for the process's environment, or KEY to pass this process's value (repeatable); nothing else is passed"},
	&cli.StringFlag{Name: "cwd", Usage: "working directory on the host (default /)"},
	&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "run the process on a terminal"},
	&cli.BoolFlag{Name: "no-stdin", Aliases: []string{"n"}, Usage: "give the process /dev/null as stdin"},
	&cli.DurationFlag{Name: "timeout", Usage: "terminate the process after this long (exit 124)"},
}

// dialerFromFlags builds the connection to the server from flags,
// environment and the client config file.
func dialerFromFlags(c *cli.Context) (rexec.Dialer, *rexec.ClientConfig, error) {
	cfg, err := rexec.LoadClientConfig(c.String("config"), c.IsSet("config"))
	if err != nil {
		return nil, nil, err
	}
	addr := c.String("addr")
	if addr == "" {
		addr = cfg.Addr
	}
	if addr == "" {
		return nil, nil, fmt.Errorf("no server address: use --addr, $REXEC_ADDR or addr in %s", c.String("config"))
	}
	a, err := transport.ParseAddress(addr)
	if err != nil {
		return nil, nil, err
	}
	sec := cfg.SecurityConfig()
	if d := c.String("tls-dir"); d != "" {
		sec = transport.DPUSecurity(d)
	}
	if c.Bool("insecure") {
		sec.Insecure = true
	}
	return rexec.TransportDialer(a, sec), cfg, nil
}

func runAction(c *cli.Context) error {
	args := c.Args().Slice()
	if len(args) == 0 {
		return cli.ShowAppHelp(c)
	}
	dial, _, err := dialerFromFlags(c)
	if err != nil {
		return err
	}
	var env []string
	for _, e := range c.StringSlice("env") {
		if k, _, ok := strings.Cut(e, "="); ok {
			if k == "" {
				return fmt.Errorf("--env %q: empty name", e)
			}
			env = append(env, e)
		} else if v, ok := os.LookupEnv(e); ok {
			env = append(env, e+"="+v)
		}
	}
	cmd := &rexec.Cmd{
		Path:    args[0],
		Args:    args[1:],
		Env:     env,
		Dir:     c.String("cwd"),
		TTY:     c.Bool("tty"),
		Stdout:  os.Stdout,
		Stderr:  os.Stderr,
		Timeout: c.Duration("timeout"),
	}
	if !c.Bool("no-stdin") {
		cmd.Stdin = os.Stdin
	}
	os.Exit(runRemote(context.Background(), rexec.NewClient(dial), cmd))
	return nil
}

// runRemote runs cmd, forwarding signals (and, on a terminal, its size), and
// returns the exit code rexec exits with. Errors are reported on stderr.
func runRemote(ctx context.Context, client *rexec.Client, cmd *rexec.Cmd) int {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, rexec.ForwardedSignals...)
	defer signal.Stop(sigs)

	var term console.Console
	if cmd.TTY {
		if t, err := console.ConsoleFromFile(os.Stdin); err == nil {
			term = t
			if ws, err := t.Size(); err == nil && ws.Height > 0 {
				cmd.Window = &rexec.WindowSize{Rows: ws.Height, Cols: ws.Width}
			}
			signal.Notify(sigs, unix.SIGWINCH)
			if err := t.SetRaw(); err != nil {
				fmt.Fprintln(os.Stderr, "rexec: raw terminal:", err)
			} else {
				defer t.Reset()
			}
		}
	}

	e, err := client.Start(ctx, cmd)
	if err != nil {
		var re *rexec.RefusedError
		if errors.As(err, &re) {
			fmt.Fprintln(os.Stderr, re.Message)
			return re.Code
		}
		report(err)
		return exitRexecError
	}
	type waited struct {
		st  rexec.ExitStatus
		err error
	}
	done := make(chan waited, 1)
	go func() {
		st, err := e.Wait()
		done <- waited{st, err}
	}()
	for {
		select {
		case s := <-sigs:
			if s == unix.SIGWINCH {
				if term != nil {
					if ws, err := term.Size(); err == nil {
						_ = e.Resize(rexec.WindowSize{Rows: ws.Height, Cols: ws.Width})
					}
				}
				continue
			}
			if name, err := rexec.SignalName(s); err == nil {
				_ = e.Signal(name)
			}
		case w := <-done:
			if w.err != nil {
				report(w.err)
				return exitRexecError
			}
			if w.st.TimedOut {
				fmt.Fprintf(os.Stderr, "rexec: %s: timed out\n", cmd.Path)
				return exitTimedOut
			}
			return w.st.Code
		}
	}
}

// report prints err once prefixed with "rexec:" (library errors already are).
func report(err error) {
	msg := err.Error()
	if !strings.HasPrefix(msg, "rexec:") {
		msg = "rexec: " + msg
	}
	fmt.Fprintln(os.Stderr, msg)
}
