package rexec

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/containerd/log"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
)

// Timing of the protocol. Variables so tests can shorten them.
var (
	// firstFrameTimeout bounds how long a new connection may take to say
	// what it is for.
	firstFrameTimeout = 10 * time.Second
	// attachTimeout bounds how long a started process waits for its data
	// connections before the session is treated as abandoned.
	attachTimeout = 10 * time.Second
	// keepaliveInterval is how often both sides send Keepalive on an idle
	// control connection; silence for three intervals means the link is gone.
	keepaliveInterval = 5 * time.Second
	// drainGrace bounds how long output is still forwarded after the process
	// exited, when a descendant keeps the pipes or the terminal open.
	drainGrace = 2 * time.Second
	// killGrace is the time between SIGTERM and SIGKILL on a timeout.
	killGrace = 5 * time.Second
)

// Server runs allowlisted binaries for rexec clients. One Server may serve
// several listeners; each connection is a control or a data connection of
// one exec session (see docs/rexec-protocol.md).
type Server struct {
	allow *allowlist

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	sessions  map[string]*session
	wg        sync.WaitGroup
}

// NewServer validates cfg and returns a server with no listeners.
func NewServer(cfg ServerConfig) (*Server, error) {
	a, err := newAllowlist(cfg.Allow)
	if err != nil {
		return nil, err
	}
	return &Server{
		allow:     a,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
		sessions:  make(map[string]*session),
	}, nil
}

// Serve accepts connections on l until Close. It returns nil after Close and
// the accept error otherwise.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !s.track(conn) {
			conn.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn)
		}()
	}
}

// Close stops every listener, kills every running process group and waits
// for the sessions to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// handle reads a connection's first frame and hands it to an exec session
// (control connection) or to a waiting stream (data connection).
func (s *Server) handle(conn net.Conn) {
	ctx := log.WithLogger(context.Background(), log.L.WithField("peer", peerName(conn)))
	_ = conn.SetReadDeadline(time.Now().Add(firstFrameTimeout))
	f, err := readClientFrame(conn)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		log.G(ctx).WithError(err).Debug("rexec: bad first frame")
		s.closeConn(conn)
		return
	}
	switch m := f.Msg.(type) {
	case *rexecv1.ClientFrame_Exec:
		s.exec(ctx, conn, m.Exec)
	case *rexecv1.ClientFrame_Attach:
		if err := s.attach(conn, m.Attach); err != nil {
			log.G(ctx).WithError(err).Warn("rexec: attach refused")
			s.closeConn(conn)
		}
	default:
		log.G(ctx).Debugf("rexec: unexpected first frame %T", f.Msg)
		s.closeConn(conn)
	}
}

func (s *Server) closeConn(c net.Conn) {
	c.Close()
	s.untrack(c)
}

func (s *Server) attach(conn net.Conn, a *rexecv1.Attach) error {
	s.mu.Lock()
	sess := s.sessions[string(a.GetSession())]
	s.mu.Unlock()
	if sess == nil {
		return errors.New("rexec: attach to unknown session")
	}
	return sess.attach(a.GetStream(), conn)
}

func (s *Server) addSession(sess *session) {
	s.mu.Lock()
	s.sessions[sess.id] = sess
	s.mu.Unlock()
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess.id)
	s.mu.Unlock()
}
