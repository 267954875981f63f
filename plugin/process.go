package plugin

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// process is a container's init (id "") or one exec process. Its status
// moves CREATED → RUNNING → STOPPED; an init may also be PAUSED, which runc
// reports (see container.status). A process is removed by Delete.
type process struct {
	c    *container
	id   string
	spec *specs.Process // exec processes only
	io   *processIO

	mu     sync.Mutex
	status runtimev1.Status
	// starting is set while Start runs runc, so a second Start is refused.
	starting bool
	pid      int
	watch    *pidWatch
	exit     exitInfo
	exited   chan struct{} // closed once exit is recorded
	// published is set (under c.eventMu) when this process's TaskExit has
	// been published; published is closed at the same time.
	published     bool
	publishedDone chan struct{}
}

func newProcess(c *container, id string, pio *processIO) *process {
	return &process{c: c, id: id, io: pio, status: runtimev1.Status_CREATED,
		exited: make(chan struct{}), publishedDone: make(chan struct{})}
}

func (p *process) isInit() bool { return p.id == "" }

func (p *process) name() string {
	if p.isInit() {
		return p.c.ns + "/" + p.c.id
	}
	return p.c.ns + "/" + p.c.id + "/" + p.id
}

// started records the pid of a process runc has started and begins watching
// it. The caller holds nothing.
func (p *process) started(pid int, running bool) error {
	w, err := watchPid(pid)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.pid = pid
	p.watch = w
	if running {
		p.status = runtimev1.Status_RUNNING
	}
	p.mu.Unlock()
	go func() {
		info := w.wait()
		p.c.processExited(p, info)
	}()
	return nil
}

func (p *process) setRunning() {
	p.mu.Lock()
	if p.status == runtimev1.Status_CREATED {
		p.status = runtimev1.Status_RUNNING
	}
	p.mu.Unlock()
}

// setExited records the exit; Wait returns from here on.
func (p *process) setExited(info exitInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == runtimev1.Status_STOPPED {
		return
	}
	p.status = runtimev1.Status_STOPPED
	p.exit = info
	close(p.exited)
}

func (p *process) snapshot() (status runtimev1.Status, pid int, exit exitInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.pid, p.exit
}

// signal delivers sig to a running exec process through its pidfd.
func (p *process) signal(sig unix.Signal) error {
	p.mu.Lock()
	status, w := p.status, p.watch
	p.mu.Unlock()
	switch {
	case status == runtimev1.Status_STOPPED:
		return fmt.Errorf("process %s already finished: %w", p.name(), errdefs.ErrNotFound)
	case w == nil:
		return fmt.Errorf("process %s not started: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	if err := w.signal(sig); err != nil {
		if err == unix.ESRCH {
			return fmt.Errorf("process %s already finished: %w", p.name(), errdefs.ErrNotFound)
		}
		return fmt.Errorf("signal %s: %w", p.name(), err)
	}
	return nil
}

// wait blocks until the process's TaskExit has been published (so after
// its attached output reached EOF, and for an init after its execs' exits),
// or ctx ends. Wait and the event stream never disagree.
func (p *process) wait(ctx context.Context) (exitInfo, error) {
	select {
	case <-p.publishedDone:
	case <-ctx.Done():
		return exitInfo{}, ctx.Err()
	}
	_, _, e := p.snapshot()
	return e, nil
}

// drain waits until every attached output stream reached EOF, at most
// timeout. A stream whose write to its connection has been blocked for
// stall is not waited for: nobody is reading it on the DPU side (the runc
// shim publishes exits without waiting for output at all), and its bytes
// are not dropped — the copy goes on until EOF or Delete. Streams nobody
// attached are not waited for: their bytes stay in the pipe for a later
// attach until Delete.
func (p *process) drain(timeout, stall time.Duration) {
	if p.io == nil {
		return
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	poll := time.NewTicker(drainPoll)
	defer poll.Stop()
	for _, s := range p.io.outputs() {
		if !s.isAttached() {
			continue
		}
	wait:
		for {
			select {
			case <-s.done:
				break wait
			case <-poll.C:
				if s.blockedFor() >= stall {
					log.L.Debugf("process %s: output stream blocked for %s; not waiting for its EOF", p.name(), stall)
					break wait
				}
			case <-deadline.C:
				return
			}
		}
	}
}

// drainPoll is how often drain looks at a stream's blocked write.
const drainPoll = 50 * time.Millisecond
