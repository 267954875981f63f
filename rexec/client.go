package rexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
)

// Dialer opens a new connection to a rexec server on channel "rexec". Every
// exec opens one control connection and one per data stream.
type Dialer func(ctx context.Context) (net.Conn, error)

// Client starts processes on a rexec server.
type Client struct {
	dial Dialer
}

// NewClient returns a client that connects with dial.
func NewClient(dial Dialer) *Client { return &Client{dial: dial} }

// WindowSize is a terminal size in characters.
type WindowSize struct {
	Rows, Cols uint16
}

// Cmd describes a process to run on the server.
type Cmd struct {
	Path string   // absolute path on the server; also argv[0]
	Args []string // argv[1:]
	Env  []string // the complete environment; nothing is inherited
	Dir  string   // working directory; empty means "/"
	// TTY runs the process on a terminal; Stdout then carries everything
	// the process writes and Stderr is unused.
	TTY    bool
	Window *WindowSize
	// Stdin, when not nil, is copied to the process; its EOF is the
	// process's EOF. Nil gives the process /dev/null.
	Stdin  io.Reader
	Stdout io.Writer // nil discards
	Stderr io.Writer // nil discards
	// Timeout, when positive, makes the server terminate the process group
	// after it.
	Timeout time.Duration
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	Code     int    // exit code, or 128+n when killed by signal n
	Signal   string // the killing signal's name, if any
	TimedOut bool   // the server ended it for its timeout
}

// ErrConnectionLost is returned by Wait when the control connection failed
// before the process's exit status arrived.
var ErrConnectionLost = errors.New("rexec: connection to server lost")

// Execution is a started process.
type Execution struct {
	ctx  context.Context
	pid  int
	ctrl net.Conn
	wmu  sync.Mutex

	mu    sync.Mutex
	conns []net.Conn

	outputs sync.WaitGroup
	exit    chan *rexecv1.Exit
	ctrlErr error
	done    chan struct{} // closed when the control reader returns
	stop    func() bool   // context.AfterFunc stop
}

// Run starts cmd and waits for it.
func (c *Client) Run(ctx context.Context, cmd *Cmd) (ExitStatus, error) {
	e, err := c.Start(ctx, cmd)
	if err != nil {
		return ExitStatus{}, err
	}
	return e.Wait()
}

// Start asks the server to run cmd and connects its streams. A refusal is a
// *RefusedError carrying the shell-style exit code (126 or 127). Cancelling
// ctx before Wait returns abandons the process: the server kills its group.
func (c *Client) Start(ctx context.Context, cmd *Cmd) (_ *Execution, retErr error) {
	req := &rexecv1.ExecRequest{
		ProtocolVersion: rexecv1.Version_VERSION_1,
		Path:            cmd.Path,
		Args:            cmd.Args,
		Env:             cmd.Env,
		Cwd:             cmd.Dir,
		Stdin:           cmd.Stdin != nil && !cmd.TTY,
		Tty:             cmd.TTY,
	}
	if cmd.Window != nil {
		req.Window = &rexecv1.WindowSize{Rows: uint32(cmd.Window.Rows), Cols: uint32(cmd.Window.Cols)}
	}
	if cmd.Timeout > 0 {
		req.TimeoutMs = uint64(max(cmd.Timeout.Milliseconds(), 1))
	}
	ctrl, err := c.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("rexec: connect: %w", err)
	}
	e := &Execution{ctx: ctx, ctrl: ctrl, conns: []net.Conn{ctrl}, exit: make(chan *rexecv1.Exit, 1), done: make(chan struct{})}
	defer func() {
		if retErr != nil {
			e.abort()
		}
	}()
	stopDeadline := context.AfterFunc(ctx, func() { _ = ctrl.SetDeadline(time.Now()) })
	if err := writeFrame(ctrl, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Exec{Exec: req}}); err != nil {
		stopDeadline()
		return nil, fmt.Errorf("rexec: send exec request: %w", err)
	}
	_ = ctrl.SetReadDeadline(time.Now().Add(3 * keepaliveInterval))
	f, err := readServerFrame(ctrl)
	if !stopDeadline() {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("rexec: read exec reply: %w", err)
	}
	var started *rexecv1.Started
	switch m := f.Msg.(type) {
	case *rexecv1.ServerFrame_Started:
		started = m.Started
	case *rexecv1.ServerFrame_Exit:
		code := int(m.Exit.GetCode())
		if code != ExitNotFound {
			code = ExitNotAllowed
		}
		msg := m.Exit.GetError()
		if msg == "" {
			msg = fmt.Sprintf("rexec: refused with exit code %d", m.Exit.GetCode())
		}
		return nil, &RefusedError{Code: code, Message: msg}
	default:
		return nil, fmt.Errorf("rexec: unexpected %T in reply to exec", f.Msg)
	}
	e.pid = int(started.GetPid())

	// Open the data connections in parallel: each costs a round trip (and a
	// handshake on TLS).
	type stream struct {
		id  rexecv1.Stream
		run func(net.Conn)
	}
	var streams []stream
	stdout, stderr := orDiscard(cmd.Stdout), orDiscard(cmd.Stderr)
	if cmd.TTY {
		streams = append(streams, stream{rexecv1.Stream_STREAM_TTY, func(c net.Conn) {
			if cmd.Stdin != nil {
				go pumpToServer(c, cmd.Stdin)
			}
			e.pumpFromServer(stdout, c)
		}})
	} else {
		if req.Stdin {
			streams = append(streams, stream{rexecv1.Stream_STREAM_STDIN, func(c net.Conn) { go pumpToServer(c, cmd.Stdin) }})
		}
		streams = append(streams,
			stream{rexecv1.Stream_STREAM_STDOUT, func(c net.Conn) { e.pumpFromServer(stdout, c) }},
			stream{rexecv1.Stream_STREAM_STDERR, func(c net.Conn) { e.pumpFromServer(stderr, c) }})
	}
	conns := make([]net.Conn, len(streams))
	errs := make([]error, len(streams))
	var wg sync.WaitGroup
	for i, st := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := c.dial(ctx)
			if err != nil {
				errs[i] = fmt.Errorf("rexec: connect %v: %w", st.id, err)
				return
			}
			conns[i] = c
			if err := writeFrame(c, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Attach{Attach: &rexecv1.Attach{Session: started.GetSession(), Stream: st.id}}}); err != nil {
				errs[i] = fmt.Errorf("rexec: attach %v: %w", st.id, err)
			}
		}()
	}
	wg.Wait()
	e.mu.Lock()
	for _, c := range conns {
		if c != nil {
			e.conns = append(e.conns, c)
		}
	}
	e.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i, st := range streams {
		if st.id != rexecv1.Stream_STREAM_STDIN {
			e.outputs.Add(1)
		}
		st.run(conns[i])
	}
	go e.readControl()
	go e.keepalive()
	e.stop = context.AfterFunc(ctx, e.abort)
	return e, nil
}

// Pid is the process's id on the server's host.
func (e *Execution) Pid() int { return e.pid }

// Signal forwards a signal by name (INT, TERM, HUP, QUIT, USR1, USR2, KILL).
func (e *Execution) Signal(name string) error {
	if _, err := parseSignal(name); err != nil {
		return err
	}
	return e.send(&rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Signal{Signal: &rexecv1.Signal{Name: name}}})
}

// Resize changes the size of the process's terminal (tty mode).
func (e *Execution) Resize(ws WindowSize) error {
	return e.send(&rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Resize{Resize: &rexecv1.Resize{Window: &rexecv1.WindowSize{Rows: uint32(ws.Rows), Cols: uint32(ws.Cols)}}}})
}

// Wait returns the process's exit status once it has exited and all its
// output has been written to Stdout and Stderr.
func (e *Execution) Wait() (ExitStatus, error) {
	defer e.abort()
	var exit *rexecv1.Exit
	select {
	case exit = <-e.exit:
	case <-e.done:
		select {
		case exit = <-e.exit:
		default:
			if err := e.ctx.Err(); err != nil {
				return ExitStatus{}, err
			}
			return ExitStatus{}, fmt.Errorf("%w: %v", ErrConnectionLost, e.ctrlErr)
		}
	}
	// The server half-closes the output connections before it sends Exit,
	// so this only waits for bytes already on their way.
	e.outputs.Wait()
	e.stop()
	return ExitStatus{Code: int(exit.GetCode()), Signal: exit.GetSignal(), TimedOut: exit.GetTimedOut()}, nil
}

// abort closes every connection; the server then kills the process group
// if it is still running.
func (e *Execution) abort() {
	e.mu.Lock()
	conns := e.conns
	e.conns = nil
	e.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (e *Execution) send(f *rexecv1.ClientFrame) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	_ = e.ctrl.SetWriteDeadline(time.Now().Add(3 * keepaliveInterval))
	return writeFrame(e.ctrl, f)
}

func (e *Execution) readControl() {
	defer close(e.done)
	for {
		_ = e.ctrl.SetReadDeadline(time.Now().Add(3 * keepaliveInterval))
		f, err := readServerFrame(e.ctrl)
		if err != nil {
			e.ctrlErr = err
			return
		}
		switch m := f.Msg.(type) {
		case *rexecv1.ServerFrame_Exit:
			e.exit <- m.Exit
			return
		case *rexecv1.ServerFrame_Keepalive:
		default:
			e.ctrlErr = fmt.Errorf("rexec: unexpected %T on the control connection", f.Msg)
			return
		}
	}
}

func (e *Execution) keepalive() {
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-e.done:
			return
		case <-t.C:
			if e.send(&rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Keepalive{Keepalive: &rexecv1.Keepalive{}}}) != nil {
				return
			}
		}
	}
}

func (e *Execution) pumpFromServer(w io.Writer, c net.Conn) {
	go func() {
		defer e.outputs.Done()
		_, _ = io.CopyBuffer(writerOnly{w}, readerOnly{c}, make([]byte, copyBufferSize))
	}()
}

// pumpToServer copies r to the server and half-closes at EOF. It may stay
// blocked in r.Read after the process exited (a terminal, say); the
// connection is closed under it then.
func pumpToServer(c net.Conn, r io.Reader) {
	if _, err := io.CopyBuffer(writerOnly{c}, readerOnly{r}, make([]byte, copyBufferSize)); err == nil {
		_ = closeWrite(c)
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
