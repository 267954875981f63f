package plugin

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// headerTimeout bounds how long a stdio connection may take to send its
// StdioAttach header.
const headerTimeout = 10 * time.Second

// ServeStdio accepts stdio-channel connections until l is closed. Each one
// names a process stream in its StdioAttach header and then carries that
// stream's raw bytes (docs/runtime-protocol.md).
func (s *Service) ServeStdio(l net.Listener) error {
	return serveConns(l, "stdio", s.handleStdio)
}

// serveConns hands each connection accepted on l to handle, in a goroutine
// of its own, until l is closed.
func serveConns(l net.Listener, channel string, handle func(net.Conn)) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept %s: %w", channel, err)
		}
		go handle(conn)
	}
}

func (s *Service) handleStdio(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(headerTimeout))
	var req runtimev1.StdioAttach
	if err := runtimev1.ReadStdioFrame(conn, &req); err != nil {
		log.L.WithError(err).Warn("stdio attach: bad header")
		conn.Close()
		return
	}
	begin, err := s.attach(&req, conn)
	resp := &runtimev1.StdioAttachResponse{}
	if err != nil {
		resp.Error = err.Error()
		log.L.WithError(err).Debug("stdio attach refused")
	}
	werr := runtimev1.WriteStdioFrame(conn, resp)
	if err != nil || werr != nil {
		if begin != nil {
			begin(false)
		}
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	// The stream's copier owns conn from here on.
	begin(true)
}

// attach validates the request and reserves the stream for conn; begin
// starts the copy once the answer is written (or releases the stream).
func (s *Service) attach(req *runtimev1.StdioAttach, conn net.Conn) (begin func(ok bool), err error) {
	_, p, err := s.lookup(req.Process)
	if err != nil {
		return nil, err
	}
	if p.io == nil {
		return nil, fmt.Errorf("process %s has no stdio held by this agent: %w", p.name(), errdefs.ErrNotFound)
	}
	switch req.Stream {
	case runtimev1.StdioStream_STDIN:
		if p.io.stdin == nil {
			return nil, fmt.Errorf("process %s was created without stdin: %w", p.name(), errdefs.ErrNotFound)
		}
		return p.io.stdin.attach(conn)
	case runtimev1.StdioStream_STDOUT:
		if p.io.stdout == nil {
			return nil, fmt.Errorf("process %s was created without stdout: %w", p.name(), errdefs.ErrNotFound)
		}
		return p.io.stdout.attach(conn)
	case runtimev1.StdioStream_STDERR:
		if p.io.stderr == nil {
			return nil, fmt.Errorf("process %s was created without stderr: %w", p.name(), errdefs.ErrNotFound)
		}
		return p.io.stderr.attach(conn)
	}
	return nil, fmt.Errorf("unknown stream %d: %w", req.Stream, errdefs.ErrInvalidArgument)
}
