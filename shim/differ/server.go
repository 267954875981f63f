package differ

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	"google.golang.org/grpc"
)

// Listen opens the unix socket containerd's proxy_plugins entry names. The
// socket is bound in a private directory and renamed into place, so it is
// never reachable with looser permissions than 0600; a stale socket is
// replaced.
func Listen(path string) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("socket path %q is not absolute", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("make %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(dir, ".differ-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bound := filepath.Join(tmp, "s")
	l, err := net.Listen("unix", bound)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(bound, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(bound, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("move socket into place at %s: %w", path, err)
	}
	return &unlinkListener{Listener: l, path: path}, nil
}

type unlinkListener struct {
	net.Listener
	path string
}

// Addr is the socket's final path, not the directory it was bound in.
func (l *unlinkListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unlinkListener) Close() error {
	err := l.Listener.Close()
	os.Remove(l.path)
	return err
}

// Serve serves s on l until ctx ends.
func (s *Service) Serve(ctx context.Context, l net.Listener) error {
	gs := grpc.NewServer()
	s.Register(gs)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(l) }()
	log.G(ctx).WithFields(log.Fields{"address": l.Addr().String(), "agent": s.cfg.Agent.AgentAddress,
		"shared_prefixes": s.prefixes, "content_root": s.cfg.ContentRoot}).Info("offload-differ serving")
	select {
	case <-ctx.Done():
		gs.GracefulStop()
		st := s.Stats()
		log.G(ctx).WithFields(log.Fields{"host": st.Host, "local": st.Local, "declined": st.Declined}).Info("offload-differ stopped")
		return nil
	case err := <-errc:
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return err
	}
}
