package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

var (
	_     taskAPI.TTRPCTaskService = (*service)(nil)
	_     cshim.TTRPCService       = (*service)(nil)
	empty                          = &emptypb.Empty{}
)

// publisher is what the service needs of containerd's event publisher.
type publisher interface {
	Publish(ctx context.Context, topic string, event events.Event) error
}

// service implements containerd's task API v3 by forwarding to the
// offload-agent on the host. Create/Start/ExecAdded/ExecStarted/Paused/
// Resumed/Delete events are published when the agent's RPC succeeds;
// TaskOOM and TaskExit come from the agent's ordered event stream.
type service struct {
	ctx       context.Context
	namespace string
	publisher publisher
	shutdown  shutdown.Service

	// events is the single queue to containerd: one goroutine publishes
	// in order.
	events chan any

	linkMu sync.Mutex
	cfg    *Config // from the first Create's runtime options
	link   *agentLink
	// lastSeq is the last agent event sequence number handled; a new
	// subscription after a lost connection resumes after it. The first
	// subscription starts at the agent's last_seq from Hello, so events of
	// containers this shim never held (an earlier container with the same
	// ID) are not replayed.
	lastSeq    uint64
	subscribed bool

	mu         sync.Mutex
	containers map[string]*container
}

// NewTaskService returns the task service; the agent is dialled at the first
// Create, with the configuration that Create's runtime options name.
func NewTaskService(ctx context.Context, pub publisher, sd shutdown.Service) (taskAPI.TTRPCTaskService, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	s := newService(ctx, ns, pub, sd)
	if address, err := cshim.ReadAddress("address"); err == nil {
		sd.RegisterCallback(func(context.Context) error { return cshim.RemoveSocket(address) })
	}
	return s, nil
}

func newService(ctx context.Context, ns string, pub publisher, sd shutdown.Service) *service {
	s := &service{
		ctx:        ctx,
		namespace:  ns,
		publisher:  pub,
		shutdown:   sd,
		events:     make(chan any, 128),
		containers: make(map[string]*container),
	}
	sd.RegisterCallback(func(context.Context) error {
		s.linkMu.Lock()
		defer s.linkMu.Unlock()
		if s.link != nil {
			s.link.Close()
		}
		return nil
	})
	go s.forward()
	return s
}

// RegisterTTRPC registers the task service.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// agent returns the live agent link, dialling (and subscribing to events)
// when there is none. cfg, when not nil, is the config of the request.
func (s *service) agent(ctx context.Context, cfg *Config) (*agentLink, error) {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if cfg != nil && s.cfg == nil {
		s.cfg = cfg
	}
	if s.cfg == nil {
		return nil, fmt.Errorf("%w: no agent configured (no container created yet)", errdefs.ErrFailedPrecondition)
	}
	if cfg != nil && cfg.AgentAddress != s.cfg.AgentAddress {
		return nil, fmt.Errorf("%w: this shim talks to agent %s; a container of the same group asks for %s",
			errdefs.ErrInvalidArgument, s.cfg.AgentAddress, cfg.AgentAddress)
	}
	if s.link != nil {
		select {
		case <-s.link.done:
			s.link = nil
		default:
			return s.link, nil
		}
	}
	link, err := dialAgent(ctx, s.cfg)
	if err != nil {
		return nil, err
	}
	// Subscribe before any Create is sent, so no exit can be missed.
	after := s.lastSeq
	if !s.subscribed {
		after = link.hello.GetLastSeq()
	}
	stream, err := link.api.Events(s.ctx, &runtimev1.EventsRequest{Namespace: s.namespace, AfterSeq: after})
	if err != nil {
		link.Close()
		return nil, fmt.Errorf("subscribe to agent events: %w", fromAgent(err))
	}
	if !s.subscribed {
		s.lastSeq, s.subscribed = after, true
	}
	s.link = link
	go s.receiveEvents(link, stream)
	return link, nil
}

// rpcCtx bounds a control RPC.
func (s *service) rpcCtx(ctx context.Context, link *agentLink) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, link.cfg.Timeouts.RPC.D())
}

func (s *service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("%w: container %s", errdefs.ErrNotFound, id)
	}
	return c, nil
}

func (s *service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	p := c.process(execID)
	if p == nil {
		return nil, nil, fmt.Errorf("%w: process %s of container %s", errdefs.ErrNotFound, execID, id)
	}
	return c, p, nil
}

// Create creates the container on the host and relays its stdio.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	resp, err := s.create(ctx, r)
	return resp, toContainerd(err)
}

func (s *service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("%w: checkpoint/restore is not supported by io.containerd.offload.v1", errdefs.ErrNotImplemented)
	}
	cfg, err := ConfigFromAny(r.Options)
	if err != nil {
		return nil, err
	}
	spec, err := os.ReadFile(filepath.Join(r.Bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read bundle spec: %w", err)
	}
	sio := stdioSpec{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	target, err := parseStdio(sio)
	if err != nil {
		return nil, err
	}
	link, err := s.agent(ctx, cfg)
	if err != nil {
		return nil, err
	}

	c := &container{
		id:     r.ID,
		bundle: r.Bundle,
		init:   newProcess(r.ID, "", sio),
		execs:  make(map[string]*process),
		events: newEventQueue(),
		done:   make(chan struct{}),
	}
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: container %s", errdefs.ErrAlreadyExists, r.ID)
	}
	// Registered before the agent is asked, so events for it queue up.
	s.containers[r.ID] = c
	s.mu.Unlock()
	go s.handleEvents(c)
	defer func() {
		if retErr != nil {
			s.removeContainer(c)
		}
	}()

	// The bundle copy of the config lets `delete` reach the agent later.
	if b, err := cfg.Marshal(); err == nil {
		if err := os.WriteFile(filepath.Join(r.Bundle, bundleConfigName), b, 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", bundleConfigName, err)
		}
	}

	octx, ocancel := s.rpcCtx(ctx, link)
	rl, err := openRelay(octx, s.namespace, r.ID, target)
	ocancel()
	if err != nil {
		return nil, err
	}
	c.init.relay = rl
	defer func() {
		if retErr != nil {
			rl.close(context.WithoutCancel(ctx))
		}
	}()

	in, out, errw := target.streams()
	mounts := make([]*runtimev1.Mount, 0, len(r.Rootfs))
	for _, m := range r.Rootfs {
		mounts = append(mounts, &runtimev1.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	rctx, cancel := s.rpcCtx(ctx, link)
	defer cancel()
	cresp, err := link.api.Create(rctx, &runtimev1.CreateRequest{
		Namespace:   s.namespace,
		ContainerId: r.ID,
		Spec:        spec,
		Rootfs:      mounts,
		Stdio:       &runtimev1.StdioConfig{Terminal: r.Terminal, Stdin: in, Stdout: out, Stderr: errw},
		Options:     r.Options,
		DpuBundle:   r.Bundle,
	})
	if err != nil {
		return nil, fmt.Errorf("agent create: %w", fromAgent(err))
	}
	if err := rl.attach(ctx, link, c.init.ref(s.namespace)); err != nil {
		s.forceDelete(link, c.init)
		return nil, err
	}
	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Pid:         cresp.Pid,
	})
	// A created init can exit (kill before start): its exit may follow now.
	c.init.openGate(true, false, cresp.Pid)
	return &taskAPI.CreateTaskResponse{Pid: cresp.Pid}, nil
}

// forceDelete removes a host process the shim could not finish setting up.
func (s *service) forceDelete(link *agentLink, p *process) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), link.cfg.Timeouts.RPC.D())
	defer cancel()
	if _, err := link.api.Delete(ctx, &runtimev1.DeleteRequest{Process: p.ref(s.namespace), Force: true}); err != nil {
		log.G(ctx).WithError(err).WithField("id", p.containerID).Warn("force delete after failed set-up")
	}
}

func (s *service) removeContainer(c *container) {
	s.mu.Lock()
	if s.containers[c.id] == c {
		delete(s.containers, c.id)
	}
	s.mu.Unlock()
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	c.events.close()
}

// Start starts the init or an exec process.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	resp, err := s.start(ctx, r)
	return resp, toContainerd(err)
}

func (s *service) start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" && c.init.hasExited() {
		return nil, fmt.Errorf("%w: container %s init process is not running", errdefs.ErrFailedPrecondition, c.id)
	}
	link, err := s.agent(ctx, nil)
	if err != nil {
		return nil, err
	}
	if r.ExecID == "" {
		p.closeGate()
	}
	rctx, cancel := s.rpcCtx(ctx, link)
	defer cancel()
	resp, err := link.api.Start(rctx, p.ref(s.namespace))
	if err != nil {
		// The init stays created (its exit may still come); an exec
		// that failed to start never exits.
		p.openGate(r.ExecID == "", false, p.getPid())
		return nil, fmt.Errorf("agent start: %w", fromAgent(err))
	}
	if r.ExecID == "" {
		s.send(&eventstypes.TaskStart{ContainerID: c.id, Pid: resp.Pid})
	} else {
		s.send(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: r.ExecID, Pid: resp.Pid})
	}
	p.openGate(true, true, resp.Pid)
	return &taskAPI.StartResponse{Pid: resp.Pid}, nil
}

// Delete deletes the init (the container) or an exec on the host.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.delete(ctx, r)
	return resp, toContainerd(err)
}

func (s *service) delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	link, err := s.agent(ctx, nil)
	if err != nil {
		return nil, err
	}
	// TaskDelete must follow the TaskExit: give the event stream (and the
	// stdio drain behind it) time to deliver an exit the agent already has.
	p.mu.Lock()
	running := p.running
	p.mu.Unlock()
	if running && !p.hasExited() {
		wctx, wcancel := context.WithTimeout(ctx, link.cfg.Timeouts.StdioDrain.D()+5*time.Second)
		select {
		case <-p.exited:
		case <-wctx.Done():
		}
		wcancel()
	}
	if p.relay != nil && p.hasExited() {
		// The exit may have been published while an output was blocked on
		// a slow reader: give it (as the runc shim's delete does) until it
		// ends or stops moving for stdio_drain before the host side and
		// the relay are torn down, so a live reader loses nothing.
		d := link.cfg.Timeouts.StdioDrain.D()
		p.relay.waitOutputs(d, d)
	}
	rctx, cancel := s.rpcCtx(ctx, link)
	defer cancel()
	dresp, err := link.api.Delete(rctx, &runtimev1.DeleteRequest{Process: p.ref(s.namespace)})
	if err != nil {
		return nil, fmt.Errorf("agent delete: %w", fromAgent(err))
	}
	exitedAt := protobuf.FromTimestamp(dresp.ExitedAt)
	if running && p.claimExit() {
		// The stream never brought the exit: publish it from the
		// agent's record so containerd still sees Exit before Delete.
		s.send(&eventstypes.TaskExit{ContainerID: c.id, ID: p.id(), Pid: dresp.Pid,
			ExitStatus: dresp.ExitStatus, ExitedAt: dresp.ExitedAt})
		p.setExited(dresp.ExitStatus, exitedAt)
	}
	if p.relay != nil {
		p.relay.close(ctx)
	}
	if r.ExecID == "" {
		// Nothing is left on the host: containerd's `delete` call that
		// follows every shim disconnect need not dial the agent.
		if err := os.Remove(filepath.Join(c.bundle, bundleConfigName)); err != nil && !os.IsNotExist(err) {
			log.G(ctx).WithError(err).Warn("remove bundle config copy")
		}
		s.removeContainer(c)
		s.send(&eventstypes.TaskDelete{ContainerID: c.id, Pid: dresp.Pid, ExitStatus: dresp.ExitStatus, ExitedAt: dresp.ExitedAt})
	} else {
		c.mu.Lock()
		delete(c.execs, r.ExecID)
		c.mu.Unlock()
	}
	return &taskAPI.DeleteResponse{Pid: dresp.Pid, ExitStatus: dresp.ExitStatus, ExitedAt: dresp.ExitedAt}, nil
}

// Exec adds an exec process on the host and relays its stdio.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	return empty, toContainerd(s.exec(ctx, r))
}

func (s *service) exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (retErr error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return err
	}
	if r.ExecID == "" {
		return fmt.Errorf("%w: exec id is empty", errdefs.ErrInvalidArgument)
	}
	if c.init.hasExited() {
		return fmt.Errorf("%w: container %s init process is not running", errdefs.ErrFailedPrecondition, c.id)
	}
	sio := stdioSpec{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	target, err := parseStdio(sio)
	if err != nil {
		return err
	}
	link, err := s.agent(ctx, nil)
	if err != nil {
		return err
	}
	p := newProcess(c.id, r.ExecID, sio)
	c.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		c.mu.Unlock()
		return fmt.Errorf("%w: id %s", errdefs.ErrAlreadyExists, r.ExecID)
	}
	c.execs[r.ExecID] = p
	c.mu.Unlock()
	defer func() {
		if retErr != nil {
			c.mu.Lock()
			delete(c.execs, r.ExecID)
			c.mu.Unlock()
		}
	}()
	octx, ocancel := s.rpcCtx(ctx, link)
	rl, err := openRelay(octx, s.namespace, c.id, target)
	ocancel()
	if err != nil {
		return err
	}
	p.relay = rl
	defer func() {
		if retErr != nil {
			rl.close(context.WithoutCancel(ctx))
		}
	}()
	in, out, errw := target.streams()
	rctx, cancel := s.rpcCtx(ctx, link)
	defer cancel()
	if _, err := link.api.Exec(rctx, &runtimev1.ExecRequest{
		Process: p.ref(s.namespace),
		Stdio:   &runtimev1.StdioConfig{Terminal: r.Terminal, Stdin: in, Stdout: out, Stderr: errw},
		Spec:    r.Spec.GetValue(),
	}); err != nil {
		return fmt.Errorf("agent exec: %w", fromAgent(err))
	}
	if err := rl.attach(ctx, link, p.ref(s.namespace)); err != nil {
		s.forceDelete(link, p)
		return err
	}
	s.send(&eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return nil
}

// ResizePty resizes the host console of a process.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toContainerd(err)
	}
	err = s.call(ctx, func(ctx context.Context, link *agentLink) error {
		_, err := link.api.ResizePty(ctx, &runtimev1.ResizePtyRequest{Process: p.ref(s.namespace), Width: r.Width, Height: r.Height})
		return err
	})
	return empty, toContainerd(err)
}

// call runs one bounded control RPC.
func (s *service) call(ctx context.Context, fn func(context.Context, *agentLink) error) error {
	link, err := s.agent(ctx, nil)
	if err != nil {
		return err
	}
	rctx, cancel := s.rpcCtx(ctx, link)
	defer cancel()
	return fromAgent(fn(rctx, link))
}

// State reports the process state. Stdio paths and the bundle are the DPU's;
// a process whose exit the shim has not published yet is still running.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toContainerd(err)
	}
	resp := &taskAPI.StateResponse{
		ID:       p.id(),
		ExecID:   r.ExecID,
		Bundle:   c.bundle,
		Pid:      p.getPid(),
		Stdin:    p.stdio.Stdin,
		Stdout:   p.stdio.Stdout,
		Stderr:   p.stdio.Stderr,
		Terminal: p.stdio.Terminal,
	}
	if p.hasExited() {
		st, at := p.exit()
		resp.Status, resp.ExitStatus, resp.ExitedAt = task.Status_STOPPED, st, protobuf.ToTimestamp(at)
		return resp, nil
	}
	var ar *runtimev1.StateResponse
	err = s.call(ctx, func(ctx context.Context, link *agentLink) (err error) {
		ar, err = link.api.State(ctx, p.ref(s.namespace))
		return err
	})
	if err != nil {
		return nil, toContainerd(err)
	}
	resp.Status = task.Status(ar.Status)
	if ar.Status == runtimev1.Status_STOPPED {
		resp.Status = task.Status_RUNNING
	}
	if resp.Pid == 0 {
		resp.Pid = ar.Pid
	}
	return resp, nil
}

// Pause freezes the container on the host.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return s.freeze(ctx, r.ID, runtimev1.AgentClient.Pause, &eventstypes.TaskPaused{ContainerID: r.ID})
}

// Resume thaws the container on the host.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return s.freeze(ctx, r.ID, runtimev1.AgentClient.Resume, &eventstypes.TaskResumed{ContainerID: r.ID})
}

// freeze forwards Pause or Resume of container id and publishes ev once
// the host has done it.
func (s *service) freeze(ctx context.Context, id string, rpc func(runtimev1.AgentClient, context.Context, *runtimev1.ProcessRef) (*emptypb.Empty, error), ev any) (*emptypb.Empty, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, toContainerd(err)
	}
	err = s.call(ctx, func(ctx context.Context, link *agentLink) error {
		_, err := rpc(link.api, ctx, c.init.ref(s.namespace))
		return err
	})
	if err != nil {
		return nil, toContainerd(err)
	}
	s.send(ev)
	return empty, nil
}

// Checkpoint is not supported: the checkpoint image would have to be written
// on the host and moved; containerd gets NotImplemented.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, toContainerd(fmt.Errorf("%w: checkpoint is not supported by io.containerd.offload.v1", errdefs.ErrNotImplemented))
}

// Kill signals a process (or, with all, every process of the container).
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toContainerd(err)
	}
	err = s.call(ctx, func(ctx context.Context, link *agentLink) error {
		_, err := link.api.Kill(ctx, &runtimev1.KillRequest{Process: p.ref(s.namespace), Signal: r.Signal, All: r.All})
		return err
	})
	if err != nil {
		return nil, toContainerd(err)
	}
	return empty, nil
}

// Pids lists the container's host pids; exec processes carry their exec ID.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, toContainerd(err)
	}
	var ar *runtimev1.PidsResponse
	err = s.call(ctx, func(ctx context.Context, link *agentLink) (err error) {
		ar, err = link.api.Pids(ctx, c.init.ref(s.namespace))
		return err
	})
	if err != nil {
		return nil, toContainerd(err)
	}
	resp := &taskAPI.PidsResponse{}
	for _, pi := range ar.Processes {
		info := &task.ProcessInfo{Pid: pi.Pid}
		if pi.ExecId != "" {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: pi.ExecId})
			if err != nil {
				return nil, toContainerd(fmt.Errorf("marshal process %d info: %w", pi.Pid, err))
			}
			info.Info = a
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

// CloseIO delivers EOF to the process's stdin once every byte the client
// wrote before it has been relayed (see relay.closeStdin).
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toContainerd(err)
	}
	if p.relay != nil {
		p.relay.closeStdin()
	}
	return empty, nil
}

// Update changes the container's resources on the host.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, toContainerd(err)
	}
	err = s.call(ctx, func(ctx context.Context, link *agentLink) error {
		_, err := link.api.Update(ctx, &runtimev1.UpdateRequest{Process: c.init.ref(s.namespace), Resources: r.Resources, Annotations: r.Annotations})
		return err
	})
	if err != nil {
		return nil, toContainerd(err)
	}
	return empty, nil
}

// Wait waits until the process's TaskExit has been queued for containerd.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toContainerd(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, toContainerd(ctx.Err())
	}
	st, at := p.exit()
	return &taskAPI.WaitResponse{ExitStatus: st, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Stats returns the host cgroup's metrics as the agent encoded them
// (io.containerd.cgroups.v1.Metrics or v2.Metrics).
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, toContainerd(err)
	}
	var ar *runtimev1.StatsResponse
	err = s.call(ctx, func(ctx context.Context, link *agentLink) (err error) {
		ar, err = link.api.Stats(ctx, c.init.ref(s.namespace))
		return err
	})
	if err != nil {
		return nil, toContainerd(err)
	}
	return &taskAPI.StatsResponse{Stats: ar.Stats}, nil
}

// Connect returns the shim's pid and the task's host pid.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	var pid uint32
	if c, err := s.getContainer(r.ID); err == nil {
		pid = c.init.getPid()
	}
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: pid}, nil
}

// Shutdown stops the shim once it serves no container.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 {
		return empty, nil
	}
	s.shutdown.Shutdown()
	return empty, nil
}

// send queues an event for containerd.
func (s *service) send(evt any) {
	select {
	case s.events <- evt:
	case <-s.shutdown.Done():
	}
}

// forward publishes queued events in order.
func (s *service) forward() {
	ctx := context.WithoutCancel(s.ctx)
	for {
		select {
		case e := <-s.events:
			if err := s.publisher.Publish(ctx, topicOf(e), e); err != nil {
				log.G(ctx).WithError(err).Error("publish event")
			}
		case <-s.shutdown.Done():
			// Flush what is queued, then stop.
			for {
				select {
				case e := <-s.events:
					if err := s.publisher.Publish(ctx, topicOf(e), e); err != nil {
						log.G(ctx).WithError(err).Error("publish event")
					}
				default:
					if c, ok := s.publisher.(interface{ Close() error }); ok {
						c.Close()
					}
					return
				}
			}
		}
	}
}

func topicOf(e any) string {
	switch e.(type) {
	case *eventstypes.TaskCreate:
		return runtime.TaskCreateEventTopic
	case *eventstypes.TaskStart:
		return runtime.TaskStartEventTopic
	case *eventstypes.TaskOOM:
		return runtime.TaskOOMEventTopic
	case *eventstypes.TaskExit:
		return runtime.TaskExitEventTopic
	case *eventstypes.TaskDelete:
		return runtime.TaskDeleteEventTopic
	case *eventstypes.TaskExecAdded:
		return runtime.TaskExecAddedEventTopic
	case *eventstypes.TaskExecStarted:
		return runtime.TaskExecStartedEventTopic
	case *eventstypes.TaskPaused:
		return runtime.TaskPausedEventTopic
	case *eventstypes.TaskResumed:
		return runtime.TaskResumedEventTopic
	case *eventstypes.TaskCheckpointed:
		return runtime.TaskCheckpointedEventTopic
	}
	return runtime.TaskUnknownTopic
}
