// Package server is the host side of qtfs: it serves directories ("exports")
// to DPU clients over the qtfs wire protocol (api/qtfs/v1).
//
// Every name a client sends is a single path component resolved beneath a
// directory node the server already holds, with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_MAGICLINKS) and O_NOFOLLOW, or with *at calls on that directory's
// fd and AT_SYMLINK_NOFOLLOW; the server never follows a symlink on behalf of a
// client and never puts a host path on the wire.
package server

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Export is one directory the server offers.
type Export struct {
	Name     string `toml:"name"`
	Path     string `toml:"path"`
	ReadOnly bool   `toml:"read_only"`
	// AllowDevices permits mknod of character and block devices (other than
	// the 0/0 overlayfs whiteout, which is always allowed).
	AllowDevices bool `toml:"allow_devices"`
}

// Config configures a Server.
type Config struct {
	Exports []Export `toml:"export"`
	// SessionGraceSeconds keeps a client's handles this long after its last
	// connection closed, so a reconnecting client finds them (default 60).
	SessionGraceSeconds int `toml:"session_grace_seconds"`
	// DisableNotify turns off inotify-driven cache invalidation pushes.
	DisableNotify bool `toml:"disable_notify"`
	// MaxHeldDirs bounds the directories held open (O_PATH) across all
	// sessions (default 8192); beyond it directory nodes are kept as file
	// handles and opened per operation, so a DPU caching many directories
	// cannot exhaust the process's file descriptors.
	MaxHeldDirs int `toml:"max_held_dirs"`
}

// Server serves exports on any number of listeners.
type Server struct {
	cfg     Config
	grace   time.Duration
	exports map[string]*export

	mu        sync.Mutex
	sessions  map[[16]byte]*session
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool

	heldDirs atomic.Int64 // directory O_PATH fds held by nodes
}

type export struct {
	Export
	rootFd  int // O_PATH directory fd of the export root
	mountFd int // O_RDONLY fd of the root: open_by_handle_at refuses O_PATH fds
	mountID int // mount of the root: file handles are only used on it
}

// New opens every export root and checks the configuration.
func New(cfg Config) (*Server, error) {
	if len(cfg.Exports) == 0 {
		return nil, fmt.Errorf("qtfs server: no exports: %w", errdefs.ErrInvalidArgument)
	}
	s := &Server{
		cfg:       cfg,
		grace:     time.Duration(cfg.SessionGraceSeconds) * time.Second,
		exports:   map[string]*export{},
		sessions:  map[[16]byte]*session{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
	if s.grace <= 0 {
		s.grace = 60 * time.Second
	}
	if s.cfg.MaxHeldDirs <= 0 {
		s.cfg.MaxHeldDirs = 8192
	}
	for _, e := range cfg.Exports {
		if e.Name == "" || len(e.Name) > 255 {
			s.closeExports()
			return nil, fmt.Errorf("export name %q: %w", e.Name, errdefs.ErrInvalidArgument)
		}
		if _, dup := s.exports[e.Name]; dup {
			s.closeExports()
			return nil, fmt.Errorf("export %q defined twice: %w", e.Name, errdefs.ErrInvalidArgument)
		}
		if !filepath.IsAbs(e.Path) {
			s.closeExports()
			return nil, fmt.Errorf("export %q: path %q is not absolute: %w", e.Name, e.Path, errdefs.ErrInvalidArgument)
		}
		fd, err := unix.Open(e.Path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			s.closeExports()
			return nil, fmt.Errorf("open export %q (%s): %w", e.Name, e.Path, err)
		}
		mfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			s.closeExports()
			return nil, fmt.Errorf("open export %q (%s): %w", e.Name, e.Path, err)
		}
		_, mountID, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
		if err != nil {
			mountID = -1 // no file handles on this fs: nodes keep O_PATH fds
		}
		s.exports[e.Name] = &export{Export: e, rootFd: fd, mountFd: mfd, mountID: mountID}
	}
	return s, nil
}

func (s *Server) closeExports() {
	for _, e := range s.exports {
		unix.Close(e.rootFd)
		unix.Close(e.mountFd)
	}
}

// Serve accepts connections on l until l fails or the server is closed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("qtfs server closed")
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("qtfs accept: %w", err)
		}
		c := &conn{srv: s, nc: nc}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go c.serve()
	}
}

// Close stops all listeners and connections and releases every handle.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	sessions := s.sessions
	s.sessions = map[[16]byte]*session{}
	s.mu.Unlock()
	for _, c := range conns {
		c.nc.Close()
	}
	for _, ss := range sessions {
		ss.destroy()
	}
	s.closeExports()
	return nil
}

// attach finds or creates the session a Hello names and registers c in it.
func (s *Server) attach(c *conn, id [16]byte, exp *export) (*session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("server closed")
	}
	ss := s.sessions[id]
	if ss != nil && ss.exp != exp {
		return nil, fmt.Errorf("session bound to export %q: %w", ss.exp.Name, errdefs.ErrInvalidArgument)
	}
	if ss == nil {
		var err error
		ss, err = newSession(s, id, exp)
		if err != nil {
			return nil, err
		}
		s.sessions[id] = ss
		log.L.WithField("export", exp.Name).Debug("qtfs: new session")
	}
	ss.addConn(c)
	return ss, nil
}

// detach removes c; a session without connections expires after the grace period.
func (s *Server) detach(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	ss := c.sess
	s.mu.Unlock()
	if ss == nil {
		return
	}
	if ss.removeConn(c) {
		time.AfterFunc(s.grace, func() {
			s.mu.Lock()
			if ss.idle() && s.sessions[ss.id] == ss {
				delete(s.sessions, ss.id)
				s.mu.Unlock()
				ss.destroy()
				return
			}
			s.mu.Unlock()
		})
	}
}

func randUint64() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return binary.LittleEndian.Uint64(b[:]) | 1
}
