//go:build e2e

package runtime

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
)

// ptySession is ctr running on a pseudo-terminal we hold the master of, as
// a user at a terminal would run `ctr run -t`.
type ptySession struct {
	master console.Console
	mu     sync.Mutex
	out    bytes.Buffer
	grew   chan struct{}
}

// ptyRun runs ctr args on r's side with its stdio on a new pty of the given
// size, calls interact (if any) while it runs, and returns the output and
// ctr's exit code.
func (r rt) ptyRun(t *testing.T, rows, cols uint16, interact func(*ptySession), args ...string) (string, int) {
	t.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	if err := master.Resize(console.WinSize{Height: rows, Width: cols}); err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := r.side(ctx, append([]string{"ctr"}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// A session of its own with the pty as controlling terminal, so ctr
	// gets SIGWINCH; the session leader's group is killed on cancel.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	p := &ptySession{master: master, grew: make(chan struct{}, 1)}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			p.mu.Lock()
			p.out.Write(b[:n])
			p.mu.Unlock()
			select {
			case p.grew <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	if interact != nil {
		interact(p)
	}
	err = cmd.Wait()
	select {
	case <-readDone:
	case <-time.After(2 * time.Second):
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: ctr %q: %v", r.name, args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("%s: ctr %q timed out; output %q", r.name, args, p.output())
	}
	return p.output(), code
}

func (p *ptySession) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *ptySession) waitFor(t *testing.T, re *regexp.Regexp) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for !re.MatchString(p.output()) {
		select {
		case <-p.grew:
		case <-deadline:
			t.Fatalf("terminal never showed %s; output %q", re, p.output())
		}
	}
}

func (p *ptySession) resize(t *testing.T, rows, cols uint16) {
	t.Helper()
	if err := p.master.Resize(console.WinSize{Height: rows, Width: cols}); err != nil {
		t.Fatal(err)
	}
}

func (p *ptySession) write(t *testing.T, s string) {
	t.Helper()
	if _, err := p.master.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}
