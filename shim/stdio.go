package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/fifo"
	"github.com/containerd/log"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
	"github.com/dpu-offload/offload/api/transport"
)

// relayBufSize is the copy buffer of each stream; large enough that a
// 100 MB stdout costs few syscalls, small enough for many containers.
const relayBufSize = 32 << 10

var relayBufPool = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// relay moves one process's stdio between its DPU-local endpoints (FIFOs, a
// file or a logger binary) and the host streams on stdio connections.
//
// Outputs are copied with blocking writes, so a slow DPU reader stops the
// copy, which fills the connection's window, which stops the agent reading
// the host pipe, which blocks the writer in the container: back-pressure
// without loss.
type relay struct {
	target *stdioTarget

	// DPU-local endpoints, opened by open before the host process exists.
	stdinR    io.ReadCloser  // FIFO read side, copied to the host
	stdinKeep io.Closer      // our FIFO write side: held until CloseIO
	stdout    io.WriteCloser // destination of the host stdout stream
	stderr    io.WriteCloser // destination of the host stderr stream
	closers   []io.Closer    // keep-alive FIFO readers and the like
	logger    *loggerProcess

	mu       sync.Mutex
	conns    []net.Conn
	outputs  []*outputCopy // stdout/stderr copies, set by attach
	closedIO atomic.Bool
	closed   bool
}

// openRelay opens the DPU-local endpoints of t. It runs before the agent
// creates the host process, so a bad URI fails the RPC with nothing to undo
// on the host.
func openRelay(ctx context.Context, ns, id string, t *stdioTarget) (_ *relay, retErr error) {
	r := &relay{target: t}
	defer func() {
		if retErr != nil {
			r.close(context.WithoutCancel(ctx))
		}
	}()
	if t.stdin != "" {
		// Read side non-blocking so a client that never opens its writer
		// does not hang Create; our own write side keeps the FIFO from
		// reporting EOF until CloseIO (as the runc shim does), so every byte
		// the client wrote before CloseIO still reaches the process.
		rd, err := fifo.OpenFifo(context.WithoutCancel(ctx), t.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin fifo %s: %w", t.stdin, err)
		}
		r.stdinR = rd
		wr, err := fifo.OpenFifo(context.WithoutCancel(ctx), t.stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin fifo %s for keep-alive: %w", t.stdin, err)
		}
		r.stdinKeep = wr
	}
	switch t.kind {
	case stdioNull:
	case stdioFIFO:
		var shared *sharedWriter
		for _, o := range []struct {
			path string
			dst  *io.WriteCloser
		}{{t.stdout, &r.stdout}, {t.stderr, &r.stderr}} {
			if o.path == "" {
				continue
			}
			if shared != nil && o.path == t.stdout {
				shared.add()
				*o.dst = shared
				continue
			}
			w, keep, err := openOutput(ctx, o.path)
			if err != nil {
				return nil, err
			}
			if keep != nil {
				r.closers = append(r.closers, keep)
			}
			if keep == nil && t.stdout == t.stderr {
				// one plain file for both streams: close it after both copies
				shared = newSharedWriter(w)
				w = shared
			}
			*o.dst = w
		}
	case stdioFile:
		path := t.uri.Path
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("file stdio: %w", err)
		}
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, fmt.Errorf("file stdio: %w", err)
		}
		sw := newSharedWriter(f)
		r.stdout = sw
		if !t.terminal {
			sw.add()
			r.stderr = sw
		}
	case stdioBinary, stdioBinaryV2:
		lp, err := startLogger(ctx, ns, id, t.uri)
		if err != nil {
			return nil, err
		}
		r.logger = lp
		r.stdout = lp.stdout
		if !t.terminal {
			r.stderr = lp.stderr
		} else {
			lp.stderr.Close()
		}
	default:
		return nil, fmt.Errorf("stdio kind %q", t.kind)
	}
	if r.stdout != nil {
		r.stdout = &closeOnce{WriteCloser: r.stdout}
	}
	if r.stderr != nil {
		r.stderr = &closeOnce{WriteCloser: r.stderr}
	}
	return r, nil
}

// openOutput opens a stdout/stderr destination: a FIFO (write side, plus a
// read side that keeps the FIFO open when the client's reader goes away) or
// a plain file for appending.
func openOutput(ctx context.Context, path string) (io.WriteCloser, io.Closer, error) {
	isFifo, err := fifo.IsFifo(path)
	if err != nil {
		return nil, nil, fmt.Errorf("stat stdio %s: %w", path, err)
	}
	if !isFifo {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("open stdio file %s: %w", path, err)
		}
		return f, nil, nil
	}
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open stdio fifo %s: %w", path, err)
	}
	keep, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY, 0)
	if err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("open stdio fifo %s read side: %w", path, err)
	}
	return w, keep, nil
}

// attach opens the host streams of ref on stdio connections (in parallel:
// each is a connection set-up, mTLS on TCP) and starts the copies.
func (r *relay) attach(ctx context.Context, link *agentLink, ref *runtimev1.ProcessRef) error {
	type want struct {
		stream runtimev1.StdioStream
		conn   net.Conn
		err    error
	}
	var ws []*want
	if r.stdinR != nil {
		ws = append(ws, &want{stream: runtimev1.StdioStream_STDIN})
	}
	if r.stdout != nil {
		ws = append(ws, &want{stream: runtimev1.StdioStream_STDOUT})
	}
	if r.stderr != nil {
		ws = append(ws, &want{stream: runtimev1.StdioStream_STDERR})
	}
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.conn, w.err = link.dialStdio(ctx, ref, w.stream)
		}()
	}
	wg.Wait()
	var errs []error
	for _, w := range ws {
		if w.err != nil {
			errs = append(errs, w.err)
		} else {
			r.addConn(w.conn)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	lg := log.G(ctx).WithFields(log.Fields{"id": ref.ContainerId, "exec": ref.ExecId})
	for _, w := range ws {
		switch w.stream {
		case runtimev1.StdioStream_STDIN:
			go r.copyStdin(lg, w.conn)
		case runtimev1.StdioStream_STDOUT:
			go r.copyOutput(lg, "stdout", w.conn, r.newOutputCopy(r.stdout))
		case runtimev1.StdioStream_STDERR:
			go r.copyOutput(lg, "stderr", w.conn, r.newOutputCopy(r.stderr))
		}
	}
	return nil
}

// outputCopy is one host stream being written to its DPU endpoint. It
// records when a write to the endpoint began, so a drain can tell a copy
// that is still moving bytes from one blocked on an endpoint nobody reads
// (a FIFO whose reader, ctr -d, went away: our keep-alive read side keeps
// the FIFO open, as the runc shim's does, so the write blocks rather than
// failing).
type outputCopy struct {
	dst        io.WriteCloser
	done       chan struct{}
	writeSince atomic.Int64 // UnixNano of the write in progress, 0 between writes
}

func (r *relay) newOutputCopy(dst io.WriteCloser) *outputCopy {
	o := &outputCopy{dst: dst, done: make(chan struct{})}
	r.mu.Lock()
	r.outputs = append(r.outputs, o)
	r.mu.Unlock()
	return o
}

func (o *outputCopy) Write(p []byte) (int, error) {
	o.writeSince.Store(time.Now().UnixNano())
	n, err := o.dst.Write(p)
	o.writeSince.Store(0)
	return n, err
}

// blockedFor is how long the write in progress has been blocked.
func (o *outputCopy) blockedFor() time.Duration {
	since := o.writeSince.Load()
	if since == 0 {
		return 0
	}
	return time.Since(time.Unix(0, since))
}

func (r *relay) addConn(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return
	}
	r.conns = append(r.conns, c)
}

func (r *relay) copyOutput(lg *log.Entry, name string, conn net.Conn, o *outputCopy) {
	defer close(o.done)
	bp := relayBufPool.Get().(*[]byte)
	defer relayBufPool.Put(bp)
	if _, err := io.CopyBuffer(o, conn, *bp); err != nil && !errors.Is(err, net.ErrClosed) {
		lg.WithError(err).Warnf("relay %s", name)
	}
	o.dst.Close()
	conn.Close()
}

func (r *relay) copyStdin(lg *log.Entry, conn net.Conn) {
	bp := relayBufPool.Get().(*[]byte)
	defer relayBufPool.Put(bp)
	if _, err := io.CopyBuffer(conn, r.stdinR, *bp); err != nil && !errors.Is(err, net.ErrClosed) {
		lg.WithError(err).Warn("relay stdin")
	}
	// EOF on the FIFO (every writer gone, ours after CloseIO): EOF to the host.
	if err := transport.CloseWrite(conn); err != nil && !errors.Is(err, net.ErrClosed) {
		lg.WithError(err).Debug("half-close stdin")
	}
	r.stdinR.Close()
}

// closeStdin implements CloseIO: drop our write side of the stdin FIFO, so
// the relay sees EOF once the client's writer is closed too and the bytes
// already in the FIFO are relayed.
func (r *relay) closeStdin() {
	if r.closedIO.Swap(true) {
		return
	}
	if r.stdinKeep != nil {
		r.stdinKeep.Close()
	}
}

// waitOutputs waits for stdout and stderr to be relayed to their end (the
// agent closes each stream after the host pipe reached EOF), at most max.
// A copy whose write to its DPU endpoint has been blocked for stall is not
// waited for (nobody reads that endpoint); it goes on in the background. It
// reports whether every output reached its end.
func (r *relay) waitOutputs(max, stall time.Duration) bool {
	r.mu.Lock()
	outs := append([]*outputCopy(nil), r.outputs...)
	r.mu.Unlock()
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	poll := time.NewTicker(drainPoll)
	defer poll.Stop()
	all := true
	for _, o := range outs {
	wait:
		for {
			select {
			case <-o.done:
				break wait
			case <-poll.C:
				if o.blockedFor() >= stall {
					all = false
					break wait
				}
			case <-deadline.C:
				return false
			}
		}
	}
	return all
}

// drainPoll is how often waitOutputs looks at a copy's blocked write.
const drainPoll = 50 * time.Millisecond

// close tears the relay down: connections, FIFOs, files and the logger.
func (r *relay) close(ctx context.Context) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	r.closeStdin()
	if r.stdinR != nil {
		r.stdinR.Close()
	}
	// A copy still running ends with its connection; closing its output
	// here too is safe (closeOnce) and covers outputs that never got one.
	for _, w := range []io.WriteCloser{r.stdout, r.stderr} {
		if w != nil {
			w.Close()
		}
	}
	for _, c := range r.closers {
		c.Close()
	}
	if r.logger != nil {
		r.logger.stop(ctx)
	}
}

// closeOnce makes Close idempotent (a copy and relay.close may both close).
type closeOnce struct {
	io.WriteCloser
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.WriteCloser.Close() })
	return c.err
}

// sharedWriter closes the underlying writer when its last user closes it
// (stdout and stderr into one file).
type sharedWriter struct {
	io.WriteCloser
	mu    sync.Mutex
	users int
}

func newSharedWriter(w io.WriteCloser) *sharedWriter { return &sharedWriter{WriteCloser: w, users: 1} }

func (s *sharedWriter) add() {
	s.mu.Lock()
	s.users++
	s.mu.Unlock()
}

func (s *sharedWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.WriteCloser.Write(p)
}

func (s *sharedWriter) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users--
	if s.users == 0 {
		return s.WriteCloser.Close()
	}
	return nil
}
