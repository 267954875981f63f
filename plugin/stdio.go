package plugin

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// processIO holds the agent's ends of one process's stdio: a pipe per
// stream the DPU side asked for (the others are /dev/null), or a console in
// terminal mode. Bytes move only while a stdio-channel connection is
// attached; with none attached the pipe fills and the process blocks, so
// nothing is ever dropped.
type processIO struct {
	cfg *runtimev1.StdioConfig

	// Child ends handed to runc; closed once runc has started the process,
	// so the agent's read ends see EOF when the process (and its children)
	// close theirs.
	childIn, childOut, childErr *os.File

	stdin          *inputStream
	stdout, stderr *outputStream

	consoleSocket *runc.Socket
	console       console.Console // terminal mode, after receiveConsole
	consoleReady  chan struct{}   // closed when console is set (or failed)
}

var _ runc.IO = (*processIO)(nil)
var _ runc.StartCloser = (*processIO)(nil)

func newProcessIO(cfg *runtimev1.StdioConfig) (_ *processIO, retErr error) {
	if cfg == nil {
		cfg = &runtimev1.StdioConfig{}
	}
	p := &processIO{cfg: cfg, consoleReady: make(chan struct{})}
	defer func() {
		if retErr != nil {
			p.Close()
		}
	}()
	if cfg.Terminal {
		s, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		p.consoleSocket = s
		// The console carries stdin and stdout; stderr is merged by the tty.
		p.stdout = newOutputStream(nil)
		if cfg.Stdin {
			p.stdin = newInputStream(nil)
		}
		return p, nil
	}
	if cfg.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		p.childIn, p.stdin = r, newInputStream(w)
	}
	if cfg.Stdout {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdout pipe: %w", err)
		}
		p.childOut, p.stdout = w, newOutputStream(r)
	}
	if cfg.Stderr {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stderr pipe: %w", err)
		}
		p.childErr, p.stderr = w, newOutputStream(r)
	}
	return p, nil
}

// Set gives runc the child ends. Absent streams stay nil, which os/exec
// connects to /dev/null; in terminal mode runc's own stdio is /dev/null too
// (its errors go to the bundle's log.json).
func (p *processIO) Set(cmd *exec.Cmd) {
	if p.childIn != nil {
		cmd.Stdin = p.childIn
	}
	if p.childOut != nil {
		cmd.Stdout = p.childOut
	} else {
		// go-runc captures output into a buffer when both are nil, and the
		// container would inherit that pipe; always hand it a file.
		cmd.Stdout = devNull()
	}
	if p.childErr != nil {
		cmd.Stderr = p.childErr
	} else {
		cmd.Stderr = devNull()
	}
}

var devNullOnce = sync.OnceValue(func() *os.File {
	f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		panic(fmt.Sprintf("open %s: %v", os.DevNull, err))
	}
	return f
})

func devNull() *os.File { return devNullOnce() }

// CloseAfterStart closes the child ends in the agent.
func (p *processIO) CloseAfterStart() error {
	for _, f := range []*os.File{p.childIn, p.childOut, p.childErr} {
		if f != nil {
			f.Close()
		}
	}
	p.childIn, p.childOut, p.childErr = nil, nil, nil
	return nil
}

func (p *processIO) Stdin() io.WriteCloser { return nil }
func (p *processIO) Stdout() io.ReadCloser { return nil }
func (p *processIO) Stderr() io.ReadCloser { return nil }

// receiveConsole takes the pty master runc sent on the console socket.
func (p *processIO) receiveConsole() error {
	defer close(p.consoleReady)
	if p.consoleSocket == nil {
		return nil
	}
	defer func() {
		p.consoleSocket.Close()
		p.consoleSocket = nil
	}()
	c, err := p.consoleSocket.ReceiveMaster()
	if err != nil {
		return fmt.Errorf("receive console master: %w", err)
	}
	p.console = c
	p.stdout.setSource(consoleReader{c})
	if p.stdin != nil {
		p.stdin.setSink(nopCloser{c})
	}
	return nil
}

// Close releases every end the agent holds; attached connections end.
func (p *processIO) Close() error {
	p.CloseAfterStart()
	if p.consoleSocket != nil {
		p.consoleSocket.Close()
	}
	if p.stdin != nil {
		p.stdin.close()
	}
	for _, s := range []*outputStream{p.stdout, p.stderr} {
		if s != nil {
			s.close()
		}
	}
	if p.console != nil {
		p.console.Close()
	}
	return nil
}

// resize sets the console's window size.
func (p *processIO) resize(width, height uint32) error {
	if p.console == nil {
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	return p.console.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// outputsDone is closed when every output stream has been delivered to EOF.
func (p *processIO) outputs() []*outputStream {
	var out []*outputStream
	for _, s := range []*outputStream{p.stdout, p.stderr} {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// consoleReader turns the EIO a pty master returns after the last slave
// closes into EOF.
type consoleReader struct{ c console.Console }

func (r consoleReader) Read(b []byte) (int, error) {
	n, err := r.c.Read(b)
	if err != nil && errors.Is(err, syscall.EIO) {
		return n, io.EOF
	}
	return n, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// outputStream copies a process's stdout or stderr to at most one attached
// connection at a time. A connection that breaks may be replaced; data the
// broken one accepted is gone with it.
type outputStream struct {
	mu       sync.Mutex
	src      io.Reader
	closer   io.Closer
	ready    chan struct{} // closed once src is set
	attached bool
	eof      bool
	done     chan struct{} // closed when src reached EOF and the conn was closed
	closed   bool

	// writeSince is when the write to the attached connection that is in
	// progress began (UnixNano), 0 between writes. A write blocked for long
	// means the DPU side stopped reading (a detached container whose FIFO
	// reader went away), which the exit drain must not wait out.
	writeSince atomic.Int64
}

func newOutputStream(r *os.File) *outputStream {
	s := &outputStream{ready: make(chan struct{}), done: make(chan struct{})}
	if r != nil {
		s.src, s.closer = r, r
		close(s.ready)
	}
	return s
}

func (s *outputStream) setSource(r io.Reader) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.src = r
	close(s.ready)
}

// attach reserves the stream for conn; begin(true) starts copying,
// begin(false) releases it. It fails if another connection is attached or
// the stream already reached EOF.
func (s *outputStream) attach(conn net.Conn) (begin func(bool), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, fmt.Errorf("stream closed: %w", errdefs.ErrNotFound)
	case s.eof:
		return nil, fmt.Errorf("stream already delivered to EOF: %w", errdefs.ErrFailedPrecondition)
	case s.attached:
		return nil, fmt.Errorf("stream already attached: %w", errdefs.ErrAlreadyExists)
	}
	s.attached = true
	return func(ok bool) {
		if ok {
			go s.copy(conn)
			return
		}
		s.mu.Lock()
		s.attached = false
		s.mu.Unlock()
	}, nil
}

func (s *outputStream) copy(conn net.Conn) {
	defer conn.Close()
	<-s.ready
	buf := make([]byte, 32<<10)
	for {
		n, rerr := s.src.Read(buf)
		if n > 0 {
			s.writeSince.Store(time.Now().UnixNano())
			_, werr := conn.Write(buf[:n])
			s.writeSince.Store(0)
			if werr != nil {
				s.mu.Lock()
				s.attached = false
				s.mu.Unlock()
				return
			}
		}
		if rerr != nil {
			s.mu.Lock()
			s.eof = true
			if !s.closed {
				close(s.done)
				s.closed = true
			}
			s.mu.Unlock()
			return
		}
	}
}

// blockedFor is how long the write in progress has been blocked on the
// connection (0 when the copy is not writing).
func (s *outputStream) blockedFor() time.Duration {
	since := s.writeSince.Load()
	if since == 0 {
		return 0
	}
	return time.Since(time.Unix(0, since))
}

// isAttached reports whether a connection is attached now.
func (s *outputStream) isAttached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attached
}

func (s *outputStream) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closer != nil {
		s.closer.Close()
	}
	if !s.closed {
		s.closed = true
		close(s.done)
	}
}

// inputStream copies an attached connection into the process's stdin. The
// connection's EOF (half-close) closes stdin; so does CloseIO, after the
// attached connection's pending bytes.
type inputStream struct {
	mu        sync.Mutex
	sink      io.WriteCloser
	ready     chan struct{}
	attached  bool
	closeReq  bool // CloseIO arrived while a connection was attached
	closed    bool
	closeOnce sync.Once
}

func newInputStream(w *os.File) *inputStream {
	s := &inputStream{ready: make(chan struct{})}
	if w != nil {
		s.sink = w
		close(s.ready)
	}
	return s
}

func (s *inputStream) setSink(w io.WriteCloser) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink = w
	close(s.ready)
}

func (s *inputStream) attach(conn net.Conn) (begin func(bool), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, fmt.Errorf("stdin closed: %w", errdefs.ErrFailedPrecondition)
	case s.attached:
		return nil, fmt.Errorf("stdin already attached: %w", errdefs.ErrAlreadyExists)
	}
	s.attached = true
	return func(ok bool) {
		if ok {
			go s.copy(conn)
			return
		}
		s.mu.Lock()
		s.attached = false
		closeReq := s.closeReq
		s.mu.Unlock()
		if closeReq {
			s.close()
		}
	}, nil
}

func (s *inputStream) copy(conn net.Conn) {
	defer conn.Close()
	<-s.ready
	_, err := io.Copy(s.sink, conn)
	s.mu.Lock()
	s.attached = false
	closeReq := s.closeReq
	s.mu.Unlock()
	if err == nil || closeReq { // EOF from the peer's half-close, or CloseIO
		s.close()
	}
}

// closeIO is CloseIO(stdin): immediate without an attached connection,
// otherwise at that connection's end.
func (s *inputStream) closeIO() {
	s.mu.Lock()
	if s.attached {
		s.closeReq = true
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.close()
}

func (s *inputStream) close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		sink := s.sink
		s.mu.Unlock()
		if sink != nil {
			sink.Close()
		}
	})
}
