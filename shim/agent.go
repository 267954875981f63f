package shim

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
	"github.com/dpu-offload/offload/api/transport"
)

// Version is the shim's version, set at link time
// (-ldflags "-X github.com/dpu-offload/offload/shim.Version=...").
var Version = "dev"

// protocolVersion is the runtime protocol version this shim speaks.
const protocolVersion = 1

// agentLink is one control connection to the offload-agent (transport
// channel "runtime"). Stdio streams use their own connections (dialStdio).
type agentLink struct {
	cfg    *Config
	addr   transport.Address
	sec    transport.Security
	conn   net.Conn
	client *ttrpc.Client
	api    runtimev1.AgentClient
	hello  *runtimev1.HelloResponse
	// done is closed when the control connection is gone.
	done chan struct{}
}

// dialAgent connects to the agent's runtime channel and says Hello.
func dialAgent(ctx context.Context, cfg *Config) (*agentLink, error) {
	addr, err := transport.ParseAddress(cfg.AgentAddress)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	l := &agentLink{cfg: cfg, addr: addr, sec: cfg.Security(), done: make(chan struct{})}
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeouts.Dial.D())
	defer cancel()
	conn, err := transport.Dial(dctx, addr, l.sec, transport.ChannelRuntime)
	if err != nil {
		return nil, fmt.Errorf("%w: connect to offload-agent: %w", errdefs.ErrUnavailable, err)
	}
	l.conn = conn
	l.client = ttrpc.NewClient(conn, ttrpc.WithOnClose(func() { close(l.done) }))
	l.api = runtimev1.NewAgentClient(l.client)
	hello, err := l.api.Hello(dctx, &runtimev1.HelloRequest{
		ProtocolVersion: protocolVersion,
		Client:          "containerd-shim-offload-v1/" + Version,
	})
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("offload-agent hello: %w", fromAgent(err))
	}
	if hello.ProtocolVersion != protocolVersion {
		l.Close()
		return nil, fmt.Errorf("%w: offload-agent speaks runtime protocol %d, shim speaks %d",
			errdefs.ErrFailedPrecondition, hello.ProtocolVersion, protocolVersion)
	}
	l.hello = hello
	log.G(ctx).WithFields(log.Fields{"agent": addr.String(), "agent_version": hello.AgentVersion}).Debug("connected to offload-agent")
	return l, nil
}

// Close closes the control connection.
func (l *agentLink) Close() error {
	if l.client != nil {
		return l.client.Close()
	}
	return nil
}

// dialStdio opens one stdio stream of a process on its own connection and
// completes the StdioAttach exchange.
func (l *agentLink) dialStdio(ctx context.Context, ref *runtimev1.ProcessRef, stream runtimev1.StdioStream) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, l.cfg.Timeouts.Dial.D())
	defer cancel()
	conn, err := transport.Dial(dctx, l.addr, l.sec, transport.ChannelStdio)
	if err != nil {
		return nil, fmt.Errorf("%w: stdio connection: %w", errdefs.ErrUnavailable, err)
	}
	deadline, _ := dctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if err := writeFrame(conn, &runtimev1.StdioAttach{Process: ref, Stream: stream}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("stdio attach %s: %w", stream, err)
	}
	if err := readAttachResponse(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("stdio attach %s of %s/%s: %w", stream, ref.ContainerId, ref.ExecId, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}
