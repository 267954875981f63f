package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/urfave/cli/v2"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/shim"
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "status",
		Usage: "show the host link, the containers the agent runs, qtfs mounts and certificate expiry",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: shim.DefaultConfigPath, Usage: "shim config naming the agent address and TLS files"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "bound on reaching the agent"},
			&cli.StringFlag{Name: "namespace", Usage: "list only this containerd namespace's containers"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := shim.LoadConfigFile(c.String("config"))
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			return printStatus(ctx, os.Stdout, cfg, c.String("namespace"))
		},
	})
}

// printStatus writes a human-readable report. An unreachable agent is
// reported (and makes the command fail) after the local parts are shown.
func printStatus(ctx context.Context, w io.Writer, cfg *shim.Config, namespace string) error {
	fmt.Fprintf(w, "agent:       %s\n", cfg.AgentAddress)
	agentErr := printAgent(ctx, w, cfg, namespace)
	if agentErr != nil {
		fmt.Fprintf(w, "  unreachable: %v\n", agentErr)
	}
	printMounts(w)
	sec := cfg.Security()
	if sec.CertFile != "" {
		fmt.Fprintln(w, "certificates:")
		for _, f := range []string{sec.CAFile, sec.CertFile} {
			fmt.Fprintf(w, "  %s: %s\n", f, certExpiry(f))
		}
	}
	if agentErr != nil {
		return fmt.Errorf("agent %s unreachable", cfg.AgentAddress)
	}
	return nil
}

func printAgent(ctx context.Context, w io.Writer, cfg *shim.Config, namespace string) error {
	addr, err := transport.ParseAddress(cfg.AgentAddress)
	if err != nil {
		return err
	}
	start := time.Now()
	conn, err := transport.Dial(ctx, addr, cfg.Security(), transport.ChannelRuntime)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	agent := runtimev1.NewAgentClient(client)
	hello, err := agent.Hello(ctx, &runtimev1.HelloRequest{ProtocolVersion: 1, Client: "offloadctl"})
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	fmt.Fprintf(w, "  connected in %v: agent %s (pid %d), protocol %d, features %s\n",
		time.Since(start).Round(time.Microsecond), hello.AgentVersion, hello.AgentPid, hello.ProtocolVersion,
		strings.Join(hello.Features, ","))
	list, err := agent.List(ctx, &runtimev1.ListRequest{Namespace: namespace})
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	fmt.Fprintf(w, "containers:  %d\n", len(list.Containers))
	if len(list.Containers) > 0 {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  NAMESPACE\tID\tHOST PID\tSTATUS\tEXECS")
		for _, c := range list.Containers {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%d\n", c.Namespace, c.ContainerId, c.Pid,
				strings.ToLower(c.Status.String()), len(c.ExecIds))
		}
		tw.Flush()
	}
	return nil
}

// printMounts lists the qtfs mounts of this mount namespace.
func printMounts(w io.Writer) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		fmt.Fprintf(w, "qtfs mounts: %v\n", err)
		return
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: ... mountpoint ... - fstype source options
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 2 || !strings.Contains(qf[0], "qtfs") {
			continue
		}
		mounts = append(mounts, fmt.Sprintf("  %s (%s)", pf[4], qf[1]))
	}
	fmt.Fprintf(w, "qtfs mounts: %d\n", len(mounts))
	for _, m := range mounts {
		fmt.Fprintln(w, m)
	}
}

func certExpiry(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "no PEM certificate"
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err.Error()
	}
	left := time.Until(cert.NotAfter).Round(time.Hour)
	if left <= 0 {
		return fmt.Sprintf("EXPIRED on %s", cert.NotAfter.Format(time.RFC3339))
	}
	return fmt.Sprintf("valid until %s (%s left)", cert.NotAfter.Format("2006-01-02"), left)
}
