package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/log"
)

// loggerTermTimeout is how long a logger binary gets to flush after SIGTERM
// (the runc shim's figure).
const loggerTermTimeout = 12 * time.Second

// loggerEOFGrace is how long a logger gets to exit by itself after its
// stdout and stderr reached EOF, before it is sent SIGTERM.
const loggerEOFGrace = 2 * time.Second

// loggerProcess is a binary:// or binary-v2:// logger running on the DPU,
// fed by the relay: fd 3 is the container's stdout, fd 4 its stderr, fd 5
// the ready pipe (containerd's core/runtime/v2/logging contract).
type loggerProcess struct {
	cmd    *exec.Cmd
	stdout *os.File // write ends, closed by the relay at EOF
	stderr *os.File
	exited chan struct{}
	err    error
}

// loggerCmd builds the logger command from the URI: the path is the binary,
// each query key and its first value become arguments.
func loggerCmd(u *url.URL, ns, id string) *exec.Cmd {
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 {
			args = append(args, vs[0])
		}
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(cmd.Env, "CONTAINER_ID="+id, "CONTAINER_NAMESPACE="+ns)
	return cmd
}

// startLogger starts the logger and waits until it is ready: for binary://,
// the ready pipe closing (or a byte); for binary-v2://, a byte is required.
func startLogger(ctx context.Context, ns, id string, u *url.URL) (_ *loggerProcess, retErr error) {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	pipe := func() (*os.File, *os.File, error) {
		r, w, err := os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	outR, outW, err := pipe()
	if err != nil {
		return nil, fmt.Errorf("logger stdout pipe: %w", err)
	}
	errR, errW, err := pipe()
	if err != nil {
		return nil, fmt.Errorf("logger stderr pipe: %w", err)
	}
	readyR, readyW, err := pipe()
	if err != nil {
		return nil, fmt.Errorf("logger ready pipe: %w", err)
	}
	cmd := loggerCmd(u, ns, id)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	// Own process group: a signal to the shim's group does not cut the log.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start logger %s: %w", u.Path, err)
	}
	lp := &loggerProcess{cmd: cmd, stdout: outW, stderr: errW, exited: make(chan struct{})}
	go func() { lp.err = cmd.Wait(); close(lp.exited) }()
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
			<-lp.exited
		}
	}()
	// Only the child keeps the read ends and the ready write end.
	outR.Close()
	errR.Close()
	readyW.Close()

	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b := make([]byte, 1)
		n, err := readyR.Read(b)
		ch <- result{n, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil && !errors.Is(res.err, io.EOF) {
			return nil, fmt.Errorf("logger %s ready pipe: %w", u.Path, res.err)
		}
		if u.Scheme == stdioBinaryV2 && res.n == 0 {
			return nil, fmt.Errorf("logger %s exited or closed its ready pipe without signalling ready", u.Path)
		}
	case <-ctx.Done():
		readyR.Close()
		return nil, fmt.Errorf("logger %s not ready: %w", u.Path, ctx.Err())
	}
	files = nil
	readyR.Close()
	outR, errR = nil, nil
	return lp, nil
}

// stop waits for the logger to finish after its inputs reached EOF, then
// asks it with SIGTERM, then kills it.
func (lp *loggerProcess) stop(ctx context.Context) {
	lp.stdout.Close()
	lp.stderr.Close()
	select {
	case <-lp.exited:
		return
	case <-time.After(loggerEOFGrace):
	}
	_ = lp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-lp.exited:
	case <-time.After(loggerTermTimeout):
		log.G(ctx).WithField("logger", lp.cmd.Path).Warn("logger did not exit after SIGTERM; killing it")
		_ = lp.cmd.Process.Kill()
		<-lp.exited
	}
}
