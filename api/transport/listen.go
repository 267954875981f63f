package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/mdlayher/vsock"
)

// HandshakeTimeout bounds the TLS handshake and preface of an accepted
// connection, so a peer that connects and says nothing costs one goroutine
// for at most this long.
var HandshakeTimeout = 10 * time.Second

// Mux is a listener that authenticates each connection and hands it to the
// channel its preface names.
type Mux struct {
	addr    Address
	base    net.Listener
	tlsConf *tls.Config
	cids    map[uint32]bool
	// unlink is the unix socket path removed on Close.
	unlink string

	mu       sync.Mutex
	channels map[string]*channelListener
	closed   chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

// Listen opens a listener on addr with sec's authentication. Unix sockets
// are created mode 0600; TCP needs mTLS unless sec.Insecure; vsock needs a
// CID allowlist.
func Listen(ctx context.Context, addr Address, sec Security) (*Mux, error) {
	m := &Mux{addr: addr, channels: map[string]*channelListener{}, closed: make(chan struct{})}
	var err error
	switch addr.Network {
	case NetworkUnix:
		m.base, err = listenUnix(addr.Path)
		m.unlink = addr.Path
	case NetworkTCP:
		if !sec.hasTLS() && !sec.Insecure {
			return nil, fmt.Errorf("listen %s: TCP needs mTLS (ca, cert, key) or an explicit insecure setting", addr)
		}
		var lc net.ListenConfig
		m.base, err = lc.Listen(ctx, "tcp", net.JoinHostPort(addr.Host, fmt.Sprint(addr.Port)))
	case NetworkVsock:
		if len(sec.AllowedCIDs) == 0 {
			return nil, fmt.Errorf("listen %s: vsock needs a list of allowed peer CIDs", addr)
		}
		m.cids = map[uint32]bool{}
		for _, c := range sec.AllowedCIDs {
			m.cids[c] = true
		}
		m.base, err = vsock.Listen(addr.Port, nil)
	default:
		return nil, fmt.Errorf("listen: unknown network %q", addr.Network)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if ta, ok := m.base.Addr().(*net.TCPAddr); ok {
		m.addr.Port = uint32(ta.Port) // resolve port 0
	}
	if sec.hasTLS() {
		if m.tlsConf, err = sec.ServerTLS(); err != nil {
			m.base.Close()
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
	} else if addr.Network == NetworkTCP {
		log.G(ctx).Warnf("INSECURE: %s accepts unauthenticated, unencrypted connections from anyone who can reach it", m.addr)
	}
	return m, nil
}

// listenUnix binds inside a private directory and renames the socket into
// place, so it is never reachable before it is mode 0600.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another server is listening", path)
		}
		os.Remove(path)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".listen-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(tmp, "s"), Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(filepath.Join(tmp, "s"), 0o600); err == nil {
		err = os.Rename(filepath.Join(tmp, "s"), path)
		if err == nil {
			return l, nil
		}
	}
	l.Close()
	return nil, err
}

// Addr is the address the mux listens on.
func (m *Mux) Addr() Address { return m.addr }

// Channel returns the listener for one channel. Connections whose preface
// names a channel nobody asked for are closed.
func (m *Mux) Channel(name string) net.Listener {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.channels[name]; ok {
		return c
	}
	c := &channelListener{mux: m, name: name, conns: make(chan net.Conn), closed: make(chan struct{})}
	m.channels[name] = c
	return c
}

// Serve accepts connections until Close. It returns nil after Close.
func (m *Mux) Serve() error {
	var delay time.Duration
	for {
		conn, err := m.base.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept on %s: %w", m.addr, err)
		}
		delay = 0
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(conn)
		}()
	}
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// route authenticates conn, reads its preface and delivers it.
func (m *Mux) route(conn net.Conn) {
	ctx := log.WithLogger(context.Background(), log.G(context.Background()).WithField("peer", conn.RemoteAddr().String()))
	if m.cids != nil {
		va, ok := conn.RemoteAddr().(*vsock.Addr)
		if !ok || !m.cids[va.ContextID] {
			log.G(ctx).Warnf("%s: refused vsock peer not in allowed_cids", m.addr)
			conn.Close()
			return
		}
	}
	conn.SetDeadline(time.Now().Add(HandshakeTimeout))
	if m.tlsConf != nil {
		raw := &corkConn{Conn: conn}
		tc := tls.Server(raw, m.tlsConf)
		if err := tc.Handshake(); err != nil {
			log.G(ctx).WithError(err).Warnf("%s: TLS handshake failed", m.addr)
			conn.Close()
			return
		}
		conn = newTLSConn(tc, raw)
	}
	name, err := ReadPreface(conn)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("%s: closing connection", m.addr)
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	m.mu.Lock()
	c := m.channels[name]
	m.mu.Unlock()
	if c == nil {
		log.G(ctx).Warnf("%s: no service on channel %q", m.addr, name)
		conn.Close()
		return
	}
	select {
	case c.conns <- conn:
	case <-c.closed:
		conn.Close()
	case <-m.closed:
		conn.Close()
	}
}

// Close stops accepting, closes every channel listener and waits for
// connections being routed. Connections already delivered stay open.
func (m *Mux) Close() error {
	var err error
	m.once.Do(func() {
		close(m.closed)
		err = m.base.Close()
		if m.unlink != "" {
			os.Remove(m.unlink)
		}
		m.wg.Wait()
	})
	return err
}

type channelListener struct {
	mux    *Mux
	name   string
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

var _ net.Listener = (*channelListener)(nil)

func (c *channelListener) Accept() (net.Conn, error) {
	select {
	case conn := <-c.conns:
		return conn, nil
	case <-c.closed:
	case <-c.mux.closed:
	}
	return nil, net.ErrClosed
}

func (c *channelListener) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *channelListener) Addr() net.Addr { return c.mux.base.Addr() }
