package rexec

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
)

// copyBufferSize is the chunk size of the stream pumps. Large chunks keep the
// per-syscall cost low for bulk transfers; the kernel's socket and pipe
// buffers provide the back-pressure, so nothing is buffered beyond one chunk.
const copyBufferSize = 256 << 10

// session is one exec: the process, its pipes or terminal, and the data
// connections attached to it.
type session struct {
	srv  *Server
	ctx  context.Context
	id   string
	ctrl net.Conn
	wmu  sync.Mutex // serialises frames on ctrl
	req  *rexecv1.ExecRequest

	cmd     *exec.Cmd
	pid     int
	master  *os.File // tty mode
	stdinW  *os.File // server end of the stdin pipe
	stdoutR *os.File
	stderrR *os.File

	mu          sync.Mutex
	expect      map[rexecv1.Stream]bool
	conns       map[rexecv1.Stream]net.Conn
	allAttached chan struct{}
	ending      bool           // no more attaches
	outputs     sync.WaitGroup // output pumps
}

// result is what one exec came to, for the Exit frame and the audit line.
type result struct {
	code         int
	signal       string
	timedOut     bool
	disconnected string // why the client went away, if it did
	err          string
}

func (s *Server) exec(ctx context.Context, conn net.Conn, req *rexecv1.ExecRequest) {
	defer s.closeConn(conn)
	start := time.Now()
	audit := func(pid int, r result) {
		f := log.Fields{
			"binary": req.GetPath(), "args": req.GetArgs(), "cwd": req.GetCwd(), "tty": req.GetTty(),
			"exit": r.code, "duration": time.Since(start).Round(time.Millisecond).String(),
		}
		if pid > 0 {
			f["pid"] = pid
		}
		if r.signal != "" {
			f["signal"] = r.signal
		}
		if r.timedOut {
			f["timed_out"] = true
		}
		if r.disconnected != "" {
			f["disconnected"] = r.disconnected
		}
		if r.err != "" {
			f["error"] = r.err
		}
		log.G(ctx).WithFields(f).Info("rexec exec")
	}
	refuse := func(err error) {
		r := result{code: ExitNotAllowed, err: err.Error()}
		var re *RefusedError
		if errors.As(err, &re) {
			r.code = re.Code
		}
		_ = writeFrame(conn, &rexecv1.ServerFrame{Msg: &rexecv1.ServerFrame_Exit{Exit: &rexecv1.Exit{Code: int32(r.code), Error: r.err}}})
		audit(0, r)
	}

	if err := validateExec(req); err != nil {
		refuse(err)
		return
	}
	ok, err := s.allow.check(req.GetPath(), req.GetArgs())
	if err != nil {
		refuse(err)
		return
	}
	sess, err := s.startSession(ctx, conn, req, ok)
	if err != nil {
		refuse(err)
		return
	}
	r := sess.run()
	audit(sess.pid, r)
}

// validateExec checks the shape of a request before anything is looked up.
func validateExec(req *rexecv1.ExecRequest) error {
	bad := func(format string, a ...any) error {
		return &RefusedError{Code: ExitNotAllowed, Message: "rexec: invalid request: " + fmt.Sprintf(format, a...)}
	}
	if v := req.GetProtocolVersion(); v != rexecv1.Version_VERSION_1 {
		return bad("unsupported protocol version %d", v)
	}
	if !filepath.IsAbs(req.GetPath()) {
		return bad("path %q is not absolute", req.GetPath())
	}
	for _, a := range req.GetArgs() {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("argument contains a NUL byte")
		}
	}
	for _, e := range req.GetEnv() {
		if i := strings.IndexByte(e, '='); i <= 0 || strings.IndexByte(e, 0) >= 0 {
			return bad("environment entry %q is not KEY=VALUE", e)
		}
	}
	if c := req.GetCwd(); c != "" && (!filepath.IsAbs(c) || strings.IndexByte(c, 0) >= 0) {
		return bad("cwd %q is not absolute", c)
	}
	if w := req.GetWindow(); w != nil && (w.Rows > 0xffff || w.Cols > 0xffff) {
		return bad("window size %dx%d out of range", w.Cols, w.Rows)
	}
	return nil
}

// startSession starts the process and tells the client which session its
// data connections belong to.
func (s *Server) startSession(ctx context.Context, conn net.Conn, req *rexecv1.ExecRequest, ok *allowed) (_ *session, retErr error) {
	cwd := req.GetCwd()
	if cwd == "" {
		cwd = "/"
	}
	if st, err := os.Stat(cwd); err != nil {
		return nil, notAllowed("rexec: cwd %s: %v", cwd, errors.Unwrap(err))
	} else if !st.IsDir() {
		return nil, notAllowed("rexec: cwd %s: not a directory", cwd)
	}

	var id [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("rexec: session id: %w", err)
	}
	sess := &session{
		srv: s, ctx: ctx, id: string(id[:]), ctrl: conn, req: req,
		expect:      make(map[rexecv1.Stream]bool),
		conns:       make(map[rexecv1.Stream]net.Conn),
		allAttached: make(chan struct{}),
	}
	cmd := &exec.Cmd{
		Path: ok.resolved,
		Args: append([]string{req.GetPath()}, req.GetArgs()...),
		// Never nil: a nil Env would inherit the server's environment.
		Env:         append([]string{}, req.GetEnv()...),
		Dir:         cwd,
		SysProcAttr: &syscall.SysProcAttr{},
	}
	if r := ok.rule; r.UID != nil || r.GID != nil {
		cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), Groups: []uint32{}}
		if r.UID != nil {
			cred.Uid = *r.UID
		}
		if r.GID != nil {
			cred.Gid = *r.GID
		}
		cmd.SysProcAttr.Credential = cred
	}

	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
		if retErr != nil {
			sess.closeFiles()
		}
	}()
	if req.GetTty() {
		master, slave, err := openPty()
		if err != nil {
			return nil, err
		}
		sess.master = master
		childEnds = append(childEnds, slave)
		if w := req.GetWindow(); w != nil && w.Rows > 0 && w.Cols > 0 {
			if err := setWindowSize(master, w.Rows, w.Cols); err != nil {
				return nil, fmt.Errorf("rexec: set window size: %w", err)
			}
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		// A new session with the terminal as its controlling tty: the kernel
		// then delivers ^C, WINCH and hangup to the process group.
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		sess.expect[rexecv1.Stream_STREAM_TTY] = true
	} else {
		if req.GetStdin() {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, fmt.Errorf("rexec: stdin pipe: %w", err)
			}
			childEnds = append(childEnds, r)
			sess.stdinW = w
			cmd.Stdin = r
			sess.expect[rexecv1.Stream_STREAM_STDIN] = true
		}
		for _, st := range []rexecv1.Stream{rexecv1.Stream_STREAM_STDOUT, rexecv1.Stream_STREAM_STDERR} {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, fmt.Errorf("rexec: output pipe: %w", err)
			}
			childEnds = append(childEnds, w)
			if st == rexecv1.Stream_STREAM_STDOUT {
				sess.stdoutR, cmd.Stdout = r, w
			} else {
				sess.stderrR, cmd.Stderr = r, w
			}
			sess.expect[st] = true
		}
		// Its own process group, so the whole group can be killed.
		cmd.SysProcAttr.Setpgid = true
	}

	if err := cmd.Start(); err != nil {
		code := ExitNotAllowed
		if errors.Is(err, fs.ErrNotExist) {
			code = ExitNotFound
		}
		return nil, &RefusedError{Code: code, Message: fmt.Sprintf("rexec: start %s: %v", req.GetPath(), errors.Unwrap(err))}
	}
	sess.cmd = cmd
	sess.pid = cmd.Process.Pid
	s.addSession(sess)
	if err := sess.send(&rexecv1.ServerFrame{Msg: &rexecv1.ServerFrame_Started{Started: &rexecv1.Started{Session: id[:], Pid: int64(sess.pid)}}}); err != nil {
		// The client is already gone; run() sees the dead connection and
		// kills the process group.
		log.G(ctx).WithError(err).Debug("rexec: send started")
	}
	return sess, nil
}

func (ss *session) send(f *rexecv1.ServerFrame) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	_ = ss.ctrl.SetWriteDeadline(time.Now().Add(3 * keepaliveInterval))
	return writeFrame(ss.ctrl, f)
}

// run supervises the process until it has exited and its output has been
// forwarded, then sends Exit. Control frames arrive meanwhile; a dead control
// connection, a missing data connection or the timeout end the process group.
func (ss *session) run() result {
	defer ss.srv.removeSession(ss)
	defer ss.closeFiles()

	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = ss.cmd.Wait()
		close(exited)
	}()
	ctrlErr := make(chan error, 1)
	go func() { ctrlErr <- ss.readControl() }()

	var r result
	keepalive := time.NewTicker(keepaliveInterval)
	defer keepalive.Stop()
	attachTimer := time.NewTimer(attachTimeout)
	defer attachTimer.Stop()
	var timeoutC, killC <-chan time.Time
	if ms := ss.req.GetTimeoutMs(); ms > 0 {
		t := time.NewTimer(time.Duration(min(ms, uint64(1<<62)/uint64(time.Millisecond))) * time.Millisecond)
		defer t.Stop()
		timeoutC = t.C
	}
	lost := func(why string) {
		if r.disconnected == "" {
			r.disconnected = why
			ss.killGroup(unix.SIGKILL)
			ss.closeConns()
		}
	}
	attached := ss.allAttached
	for running := true; running; {
		select {
		case <-exited:
			running = false
		case err := <-ctrlErr:
			ctrlErr = nil
			lost(describeDisconnect(err))
		case <-attached:
			attached = nil
			attachTimer.Stop()
		case <-attachTimer.C:
			if attached != nil {
				lost("data connections not attached in time")
			}
		case <-keepalive.C:
			_ = ss.send(&rexecv1.ServerFrame{Msg: &rexecv1.ServerFrame_Keepalive{Keepalive: &rexecv1.Keepalive{}}})
		case <-timeoutC:
			r.timedOut = true
			ss.killGroup(unix.SIGTERM)
			killC = time.After(killGrace)
		case <-killC:
			ss.killGroup(unix.SIGKILL)
		}
	}
	if r.timedOut || r.disconnected != "" {
		// Descendants that stayed in the group go too.
		ss.killGroup(unix.SIGKILL)
	}
	r.code, r.signal = exitStatus(ss.cmd.ProcessState, waitErr)

	// Forward what the process wrote: wait for the data connections (the
	// output may be sitting in the pipes), then drain until EOF or until
	// drainGrace if a descendant holds the pipes open.
	if r.disconnected == "" && attached != nil {
		select {
		case <-attached:
		case <-attachTimer.C:
			lost("data connections not attached in time")
		case err := <-ctrlErr:
			ctrlErr = nil
			lost(describeDisconnect(err))
		}
	}
	ss.mu.Lock()
	ss.ending = true
	ss.mu.Unlock()
	deadline := time.Now().Add(drainGrace)
	for _, f := range []*os.File{ss.stdoutR, ss.stderrR, ss.master} {
		if f != nil {
			_ = f.SetReadDeadline(deadline)
		}
	}
	ss.outputs.Wait()
	if r.disconnected == "" {
		exit := &rexecv1.Exit{Code: int32(r.code), Signal: r.signal, TimedOut: r.timedOut}
		if err := ss.send(&rexecv1.ServerFrame{Msg: &rexecv1.ServerFrame_Exit{Exit: exit}}); err != nil {
			r.disconnected = describeDisconnect(err)
		}
	}
	ss.closeConns()
	return r
}

func describeDisconnect(err error) string {
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return "client closed the connection"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "client silent for too long (link lost)"
	default:
		return err.Error()
	}
}

// readControl handles the client's frames until the connection ends. It
// returns io.EOF when the client closed it.
func (ss *session) readControl() error {
	for {
		_ = ss.ctrl.SetReadDeadline(time.Now().Add(3 * keepaliveInterval))
		f, err := readClientFrame(ss.ctrl)
		if err != nil {
			return err
		}
		switch m := f.Msg.(type) {
		case *rexecv1.ClientFrame_Signal:
			sig, err := parseSignal(m.Signal.GetName())
			if err != nil {
				log.G(ss.ctx).WithError(err).Warn("rexec: signal refused")
				continue
			}
			// os.Process signals through a pidfd: no risk of hitting a
			// recycled pid after the process was reaped.
			if err := ss.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
				log.G(ss.ctx).WithError(err).Warnf("rexec: signal %s", m.Signal.GetName())
			}
		case *rexecv1.ClientFrame_Resize:
			w := m.Resize.GetWindow()
			if ss.master != nil && w != nil && w.Rows > 0 && w.Cols > 0 {
				if err := setWindowSize(ss.master, w.Rows, w.Cols); err != nil {
					log.G(ss.ctx).WithError(err).Warn("rexec: resize")
				}
			}
		case *rexecv1.ClientFrame_Keepalive:
		default:
			return fmt.Errorf("rexec: unexpected %T on a control connection", f.Msg)
		}
	}
}

// killGroup signals the process's whole group (the process leads it).
func (ss *session) killGroup(sig unix.Signal) {
	if err := unix.Kill(-ss.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		log.G(ss.ctx).WithError(err).Warnf("rexec: kill process group %d", ss.pid)
	}
}

func exitStatus(ps *os.ProcessState, waitErr error) (int, string) {
	if ps == nil {
		return ExitNotAllowed, ""
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok {
		return ps.ExitCode(), ""
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal()), strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
	}
	return ws.ExitStatus(), ""
}

// attach hands a data connection to its stream and pumps it until done. It
// runs on the connection's own goroutine.
func (ss *session) attach(stream rexecv1.Stream, conn net.Conn) error {
	ss.mu.Lock()
	switch {
	case !ss.expect[stream]:
		ss.mu.Unlock()
		return fmt.Errorf("rexec: stream %v not part of this exec", stream)
	case ss.conns[stream] != nil:
		ss.mu.Unlock()
		return fmt.Errorf("rexec: stream %v already attached", stream)
	case ss.ending:
		ss.mu.Unlock()
		return errors.New("rexec: exec already ended")
	}
	ss.conns[stream] = conn
	if len(ss.conns) == len(ss.expect) {
		close(ss.allAttached)
	}
	output := stream != rexecv1.Stream_STREAM_STDIN
	if output {
		ss.outputs.Add(1)
	}
	ss.mu.Unlock()

	switch stream {
	case rexecv1.Stream_STREAM_STDIN:
		ss.pumpIn(conn, ss.stdinW, false)
	case rexecv1.Stream_STREAM_STDOUT:
		ss.pumpOut(conn, ss.stdoutR)
	case rexecv1.Stream_STREAM_STDERR:
		ss.pumpOut(conn, ss.stderrR)
	case rexecv1.Stream_STREAM_TTY:
		go ss.pumpIn(conn, ss.master, true)
		ss.pumpOut(conn, ss.master)
	}
	return nil
}

// pumpIn copies a client's input into the process. EOF from the client
// closes the pipe (the process reads EOF); on a terminal it types ^D instead,
// as closing the master would hang the terminal up.
func (ss *session) pumpIn(conn net.Conn, dst *os.File, tty bool) {
	buf := make([]byte, copyBufferSize)
	_, err := io.CopyBuffer(writerOnly{dst}, readerOnly{conn}, buf)
	if tty {
		if err == nil {
			_, _ = dst.Write([]byte{4})
		}
		return
	}
	dst.Close()
}

// pumpOut copies the process's output to the client and half-closes the
// connection at the end, which is the client's EOF.
func (ss *session) pumpOut(conn net.Conn, src *os.File) {
	defer ss.outputs.Done()
	buf := make([]byte, copyBufferSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// EOF (pipe), EIO (terminal hung up), or drainGrace passed.
			if !errors.Is(err, io.EOF) && !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) {
				log.G(ss.ctx).WithError(err).Debug("rexec: read output")
			}
			break
		}
	}
	_ = closeWrite(conn)
}

// closeConns closes every data connection, which also unblocks the pumps.
func (ss *session) closeConns() {
	ss.mu.Lock()
	ss.ending = true
	conns := make([]net.Conn, 0, len(ss.conns))
	for _, c := range ss.conns {
		conns = append(conns, c)
	}
	ss.mu.Unlock()
	for _, c := range conns {
		ss.srv.closeConn(c)
	}
}

func (ss *session) closeFiles() {
	for _, f := range []*os.File{ss.master, ss.stdinW, ss.stdoutR, ss.stderrR} {
		if f != nil {
			f.Close()
		}
	}
}

// readerOnly and writerOnly hide ReadFrom/WriteTo so io.CopyBuffer uses the
// given buffer instead of a small one of its own.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }
