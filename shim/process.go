package shim

import (
	"context"
	"sync"
	"time"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// process is the shim's view of one host process: the container's init
// (execID "") or an exec. Its exit is known only through the agent's event
// stream; it is recorded here when the TaskExit has been queued for
// containerd, so Wait and State never run ahead of the events.
type process struct {
	containerID string
	execID      string
	stdio       stdioSpec
	relay       *relay

	mu sync.Mutex
	// gate is closed when the events so far have been queued for
	// containerd: TaskCreate (init) or TaskExecStarted (exec). A Start of
	// the init replaces it until TaskStart is queued, so an exit that races
	// the Start reply is published after TaskStart.
	gate    chan struct{}
	started bool // Create (init) or Start (exec) succeeded: its exit is published
	running bool // Start succeeded: Delete waits for the exit
	pid     uint32

	exitClaimed bool // the TaskExit is being (or has been) queued
	exited      chan struct{}
	exitStatus  uint32
	exitedAt    time.Time
}

func newProcess(containerID, execID string, sio stdioSpec) *process {
	return &process{
		containerID: containerID,
		execID:      execID,
		stdio:       sio,
		gate:        make(chan struct{}),
		exited:      make(chan struct{}),
	}
}

func (p *process) ref(ns string) *runtimev1.ProcessRef {
	return &runtimev1.ProcessRef{Namespace: ns, ContainerId: p.containerID, ExecId: p.execID}
}

// id is the process ID containerd uses in events: the container ID for init.
func (p *process) id() string {
	if p.execID == "" {
		return p.containerID
	}
	return p.execID
}

// openGate closes the current gate. started says the process exists on the
// host with pid; running that it was started.
func (p *process) openGate(started, running bool, pid uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if started {
		p.started = true
		p.pid = pid
	}
	if running {
		p.running = true
	}
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// closeGate starts a new gate phase (init Start in flight).
func (p *process) closeGate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gate = make(chan struct{})
}

// waitGate waits until no Start/Create reply is outstanding.
func (p *process) waitGate(ctx context.Context) bool {
	for {
		p.mu.Lock()
		g := p.gate
		p.mu.Unlock()
		select {
		case <-g:
		case <-ctx.Done():
			return false
		}
		p.mu.Lock()
		same := p.gate == g
		p.mu.Unlock()
		if same {
			return true
		}
	}
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// claimExit makes the caller the one that publishes the exit.
func (p *process) claimExit() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exitClaimed {
		return false
	}
	p.exitClaimed = true
	return true
}

// setExited records the exit; false if it was already recorded.
func (p *process) setExited(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return false
	default:
	}
	p.exitStatus, p.exitedAt = status, at
	close(p.exited)
	return true
}

func (p *process) exit() (uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitStatus, p.exitedAt
}

func (p *process) getPid() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// container is one task: its init and execs, and the ordered queue of agent
// events for it.
type container struct {
	id     string
	bundle string
	init   *process

	mu    sync.Mutex
	execs map[string]*process

	events *eventQueue
	// done is closed when the container is deleted from the shim.
	done chan struct{}
}

func (c *container) process(execID string) *process {
	if execID == "" {
		return c.init
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.execs[execID]
}

// eventQueue is an unbounded FIFO: the agent's event stream is read without
// ever blocking (ttrpc closes a stream whose reader stalls), and each
// container's events are then handled in order, one at a time.
type eventQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []any // *events.TaskExit, *events.TaskOOM
	closed bool
}

func newEventQueue() *eventQueue {
	q := &eventQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *eventQueue) push(e any) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.items = append(q.items, e)
	q.cond.Signal()
}

// pop blocks for the next event; false once the queue is closed.
func (q *eventQueue) pop() (any, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return nil, false
	}
	e := q.items[0]
	q.items[0] = nil
	q.items = q.items[1:]
	return e, true
}

func (q *eventQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.items = nil
	q.cond.Broadcast()
}
