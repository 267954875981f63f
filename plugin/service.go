package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// ProtocolVersion is the runtime protocol version this agent speaks.
const ProtocolVersion = 1

// Features are announced in HelloResponse.
var Features = []string{"stdio-attach", "events-replay", "oom-before-exit", "exit-after-execs", "drain-before-exit"}

// Service is the executor behind the runtime channel: one instance serves
// every container of every namespace.
type Service struct {
	cfg              Config
	policy           mountPolicy
	events           *eventLog
	ownOOMScoreAdj   int
	canLowerOOMScore bool

	mu         sync.Mutex
	containers map[string]*container // key ns + "/" + id
	// retired are cgroups of deleted host-pid containers whose orphans may
	// still turn up as zombies, until the time given.
	retired map[*containerCgroup]time.Time
	done    chan struct{}
	// starting is read-held from runc create/exec until the new process is
	// watched; the orphan sweep skips a round while it is held, so it never
	// reaps a process whose watch is about to begin.
	starting sync.RWMutex

	// unpackSlots bounds concurrent layer extractions; unpackStage is the
	// empty directory each one mounts its private root on.
	unpackSlots chan struct{}
	unpackStage string
}

var _ runtimev1.AgentService = (*Service)(nil)

// New makes the executor and re-adopts the containers recorded under the
// state dir. The caller must have made the process a subreaper
// (SetSubreaper) before any container starts.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	pol, err := newMountPolicy(cfg.AllowedMountPrefixes)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.StateDir, cfg.BundleDir, cfg.RuncRoot} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("make %s: %w", d, err)
		}
	}
	s := &Service{
		cfg:              cfg,
		policy:           pol,
		events:           newEventLog(cfg.EventBacklog),
		ownOOMScoreAdj:   readOOMScoreAdj(),
		canLowerOOMScore: hasCapSysResource(),
		containers:       map[string]*container{},
		retired:          map[*containerCgroup]time.Time{},
		done:             make(chan struct{}),
		unpackSlots:      make(chan struct{}, cfg.Unpack.MaxConcurrent),
		unpackStage:      filepath.Join(cfg.BundleDir, ".unpack-stage"),
	}
	if err := os.MkdirAll(s.unpackStage, 0o700); err != nil {
		return nil, fmt.Errorf("make %s: %w", s.unpackStage, err)
	}
	if err := s.adoptAll(ctx); err != nil {
		return nil, err
	}
	go s.sweepLoop()
	return s, nil
}

// orphanSweep is how often zombies of host-pid containers are collected.
const orphanSweep = 2 * time.Second

func (s *Service) sweepLoop() {
	t := time.NewTicker(orphanSweep)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.sweepOrphans()
		}
	}
}

// sweepOrphans reaps zombies re-parented to the agent from containers that
// share the host pid namespace (see reapOrphans).
func (s *Service) sweepOrphans() int {
	var cgs []*containerCgroup
	owned := map[int]bool{}
	s.mu.Lock()
	now := time.Now()
	for cg, until := range s.retired {
		if now.After(until) {
			delete(s.retired, cg)
			continue
		}
		cgs = append(cgs, cg)
	}
	cs := make([]*container, 0, len(s.containers))
	for _, c := range s.containers {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.mu.Lock()
		if c.hostPID && c.cg != nil {
			cgs = append(cgs, c.cg)
		}
		procs := []*process{c.init}
		for _, e := range c.execs {
			procs = append(procs, e)
		}
		c.mu.Unlock()
		for _, p := range procs {
			if p == nil {
				continue
			}
			if st, pid, _ := p.snapshot(); pid != 0 && st != runtimev1.Status_STOPPED {
				owned[pid] = true
			}
		}
	}
	if len(cgs) == 0 || !s.starting.TryLock() {
		return 0
	}
	defer s.starting.Unlock()
	return reapOrphans(func(pid int) bool { return owned[pid] }, func(procCgroup string) bool {
		for _, cg := range cgs {
			if cg.holds(procCgroup) {
				return true
			}
		}
		return false
	})
}

// retire keeps a deleted host-pid container's cgroup in the orphan sweep
// for a while: processes runc delete killed may become zombies after it.
func (s *Service) retire(cg *containerCgroup) {
	s.mu.Lock()
	s.retired[cg] = time.Now().Add(time.Minute)
	s.mu.Unlock()
}

func key(ns, id string) string { return ns + "/" + id }

func validRef(ref *runtimev1.ProcessRef) error {
	if ref == nil {
		return fmt.Errorf("missing process: %w", errdefs.ErrInvalidArgument)
	}
	if err := identifiers.Validate(ref.Namespace); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	if err := identifiers.Validate(ref.ContainerId); err != nil {
		return fmt.Errorf("container id: %w", err)
	}
	if ref.ExecId != "" {
		if err := identifiers.Validate(ref.ExecId); err != nil {
			return fmt.Errorf("exec id: %w", err)
		}
	}
	return nil
}

func (s *Service) container(ref *runtimev1.ProcessRef) (*container, error) {
	if err := validRef(ref); err != nil {
		return nil, err
	}
	s.mu.Lock()
	c, ok := s.containers[key(ref.Namespace, ref.ContainerId)]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("container %s/%s: %w", ref.Namespace, ref.ContainerId, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) lookup(ref *runtimev1.ProcessRef) (*container, *process, error) {
	c, err := s.container(ref)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(ref.ExecId)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// toWire converts an error once, at the RPC edge.
func toWire(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *Service) Hello(ctx context.Context, req *runtimev1.HelloRequest) (*runtimev1.HelloResponse, error) {
	if req.ProtocolVersion != 0 && req.ProtocolVersion < ProtocolVersion {
		return nil, toWire(fmt.Errorf("protocol version %d unsupported (agent speaks %d): %w",
			req.ProtocolVersion, ProtocolVersion, errdefs.ErrNotImplemented))
	}
	return &runtimev1.HelloResponse{ProtocolVersion: ProtocolVersion, AgentVersion: s.cfg.AgentVersion,
		Features: Features, AgentPid: uint32(os.Getpid()), LastSeq: s.events.lastSeq()}, nil
}

func (s *Service) Create(ctx context.Context, req *runtimev1.CreateRequest) (*runtimev1.CreateResponse, error) {
	ref := &runtimev1.ProcessRef{Namespace: req.Namespace, ContainerId: req.ContainerId}
	if err := validRef(ref); err != nil {
		return nil, toWire(err)
	}
	k := key(req.Namespace, req.ContainerId)
	bundle := filepath.Join(s.cfg.BundleDir, req.Namespace, req.ContainerId)
	c := &container{s: s, ns: req.Namespace, id: req.ContainerId, bundle: bundle,
		rootfs: filepath.Join(bundle, "rootfs"), dpuBundle: req.DpuBundle, runc: s.newRunc(req.Namespace, bundle),
		execs: map[string]*process{}}
	s.mu.Lock()
	if _, ok := s.containers[k]; ok {
		s.mu.Unlock()
		return nil, toWire(fmt.Errorf("container %s: %w", k, errdefs.ErrAlreadyExists))
	}
	s.containers[k] = c // reserve the name; lookups see no init yet
	s.mu.Unlock()
	if _, err := os.Stat(bundle); err == nil {
		s.forget(k)
		return nil, toWire(fmt.Errorf("bundle %s exists (left over?): %w", bundle, errdefs.ErrAlreadyExists))
	}
	if err := c.create(ctx, req); err != nil {
		s.forget(k)
		return nil, toWire(fmt.Errorf("create %s: %w", k, err))
	}
	if err := s.saveState(c, req.Stdio); err != nil {
		log.G(ctx).WithError(err).Warnf("persist %s", k)
	}
	_, pid, _ := c.init.snapshot()
	log.G(ctx).Infof("created %s pid %d", k, pid)
	return &runtimev1.CreateResponse{Pid: uint32(pid)}, nil
}

func (s *Service) forget(k string) {
	s.mu.Lock()
	delete(s.containers, k)
	s.mu.Unlock()
}

func (s *Service) Start(ctx context.Context, ref *runtimev1.ProcessRef) (*runtimev1.StartResponse, error) {
	c, p, err := s.lookup(ref)
	if err != nil {
		return nil, toWire(err)
	}
	pid, err := c.start(ctx, p)
	if err != nil {
		return nil, toWire(err)
	}
	return &runtimev1.StartResponse{Pid: uint32(pid)}, nil
}

func (s *Service) Delete(ctx context.Context, req *runtimev1.DeleteRequest) (*runtimev1.DeleteResponse, error) {
	c, p, err := s.lookup(req.Process)
	if err != nil {
		return nil, toWire(err)
	}
	resp, err := c.deleteProcess(ctx, p, req.Force)
	if err != nil {
		return nil, toWire(err)
	}
	if p.isInit() {
		s.forget(key(c.ns, c.id))
		log.G(ctx).Infof("deleted %s/%s", c.ns, c.id)
	}
	return resp, nil
}

func (s *Service) Exec(ctx context.Context, req *runtimev1.ExecRequest) (*emptypb.Empty, error) {
	if err := validRef(req.GetProcess()); err != nil {
		return nil, toWire(err)
	}
	if req.Process.ExecId == "" {
		return nil, toWire(fmt.Errorf("exec id is empty: %w", errdefs.ErrInvalidArgument))
	}
	c, err := s.container(req.Process)
	if err != nil {
		return nil, toWire(err)
	}
	var spec specs.Process
	if err := json.Unmarshal(req.Spec, &spec); err != nil {
		return nil, toWire(fmt.Errorf("decode exec process spec: %v: %w", err, errdefs.ErrInvalidArgument))
	}
	s.clampOOMScoreAdj(ctx, &spec)
	pio, err := newProcessIO(req.Stdio)
	if err != nil {
		return nil, toWire(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.init == nil || c.execs == nil {
		pio.Close()
		return nil, toWire(fmt.Errorf("container %s/%s is not ready: %w", c.ns, c.id, errdefs.ErrFailedPrecondition))
	}
	if _, ok := c.execs[req.Process.ExecId]; ok {
		pio.Close()
		return nil, toWire(fmt.Errorf("exec %q: %w", req.Process.ExecId, errdefs.ErrAlreadyExists))
	}
	p := newProcess(c, req.Process.ExecId, pio)
	p.spec = &spec
	c.execs[p.id] = p
	return &emptypb.Empty{}, nil
}

func (s *Service) State(ctx context.Context, ref *runtimev1.ProcessRef) (*runtimev1.StateResponse, error) {
	c, p, err := s.lookup(ref)
	if err != nil {
		return nil, toWire(err)
	}
	st, pid, exit := p.snapshot()
	if p.isInit() {
		st = c.status(ctx)
	}
	resp := &runtimev1.StateResponse{ContainerId: c.id, ExecId: p.id, Pid: uint32(pid), Status: st,
		DpuBundle: c.dpuBundle}
	if p.io != nil {
		resp.Stdio = p.io.cfg
	}
	if st == runtimev1.Status_STOPPED {
		resp.ExitStatus = exit.Status
		resp.ExitedAt = timestamppb.New(exit.ExitedAt)
	}
	return resp, nil
}

func (s *Service) Pids(ctx context.Context, ref *runtimev1.ProcessRef) (*runtimev1.PidsResponse, error) {
	c, err := s.container(ref)
	if err != nil {
		return nil, toWire(err)
	}
	pids, err := c.runc.Ps(ctx, c.id)
	if err != nil {
		return nil, toWire(fmt.Errorf("runc ps: %w", c.runcError(err)))
	}
	execByPid := map[int]string{}
	for _, e := range c.startedExecs() {
		_, pid, _ := e.snapshot()
		execByPid[pid] = e.id
	}
	resp := &runtimev1.PidsResponse{}
	for _, pid := range pids {
		resp.Processes = append(resp.Processes, &runtimev1.ProcessInfo{Pid: uint32(pid), ExecId: execByPid[pid]})
	}
	return resp, nil
}

func (s *Service) Pause(ctx context.Context, ref *runtimev1.ProcessRef) (*emptypb.Empty, error) {
	c, err := s.container(ref)
	if err != nil {
		return nil, toWire(err)
	}
	if err := c.runc.Pause(ctx, c.id); err != nil {
		return nil, toWire(fmt.Errorf("runc pause: %w", c.runcError(err)))
	}
	c.setPaused(true)
	return &emptypb.Empty{}, nil
}

func (s *Service) Resume(ctx context.Context, ref *runtimev1.ProcessRef) (*emptypb.Empty, error) {
	c, err := s.container(ref)
	if err != nil {
		return nil, toWire(err)
	}
	if err := c.runc.Resume(ctx, c.id); err != nil {
		return nil, toWire(fmt.Errorf("runc resume: %w", c.runcError(err)))
	}
	c.setPaused(false)
	return &emptypb.Empty{}, nil
}

func (s *Service) Kill(ctx context.Context, req *runtimev1.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.lookup(req.Process)
	if err != nil {
		return nil, toWire(err)
	}
	if err := c.kill(ctx, p, req.Signal, req.All); err != nil {
		return nil, toWire(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) ResizePty(ctx context.Context, req *runtimev1.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(req.Process)
	if err != nil {
		return nil, toWire(err)
	}
	if err := p.io.resize(req.Width, req.Height); err != nil {
		return nil, toWire(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) CloseIO(ctx context.Context, req *runtimev1.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(req.Process)
	if err != nil {
		return nil, toWire(err)
	}
	if req.Stdin && p.io.stdin != nil {
		p.io.stdin.closeIO()
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) Update(ctx context.Context, req *runtimev1.UpdateRequest) (*emptypb.Empty, error) {
	c, err := s.container(req.Process)
	if err != nil {
		return nil, toWire(err)
	}
	if req.Resources == nil {
		return &emptypb.Empty{}, nil
	}
	// containerd sends specs.LinuxResources as JSON under
	// types.containerd.io/opencontainers/runtime-spec/1/LinuxResources.
	if !strings.HasSuffix(req.Resources.TypeUrl, "LinuxResources") {
		return nil, toWire(fmt.Errorf("resources type %q: %w", req.Resources.TypeUrl, errdefs.ErrInvalidArgument))
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(req.Resources.Value, &res); err != nil {
		return nil, toWire(fmt.Errorf("decode resources: %v: %w", err, errdefs.ErrInvalidArgument))
	}
	if err := c.runc.Update(ctx, c.id, &res); err != nil {
		return nil, toWire(fmt.Errorf("runc update: %w", c.runcError(err)))
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) Wait(ctx context.Context, ref *runtimev1.ProcessRef) (*runtimev1.WaitResponse, error) {
	_, p, err := s.lookup(ref)
	if err != nil {
		return nil, toWire(err)
	}
	e, err := p.wait(ctx)
	if err != nil {
		return nil, toWire(err)
	}
	return &runtimev1.WaitResponse{ExitStatus: e.Status, ExitedAt: timestamppb.New(e.ExitedAt)}, nil
}

func (s *Service) Stats(ctx context.Context, ref *runtimev1.ProcessRef) (*runtimev1.StatsResponse, error) {
	c, err := s.container(ref)
	if err != nil {
		return nil, toWire(err)
	}
	c.mu.Lock()
	cg := c.cg
	c.mu.Unlock()
	if cg == nil {
		return nil, toWire(fmt.Errorf("container %s/%s has no cgroup: %w", c.ns, c.id, errdefs.ErrNotFound))
	}
	a, err := cg.stats()
	if err != nil {
		return nil, toWire(err)
	}
	return &runtimev1.StatsResponse{Stats: a}, nil
}

func (s *Service) List(ctx context.Context, req *runtimev1.ListRequest) (*runtimev1.ListResponse, error) {
	s.mu.Lock()
	var cs []*container
	for _, c := range s.containers {
		if req.Namespace == "" || req.Namespace == c.ns {
			cs = append(cs, c)
		}
	}
	s.mu.Unlock()
	resp := &runtimev1.ListResponse{}
	for _, c := range cs {
		c.mu.Lock()
		init := c.init
		var execIDs []string
		for id := range c.execs {
			execIDs = append(execIDs, id)
		}
		c.mu.Unlock()
		if init == nil {
			continue // still being created
		}
		_, pid, _ := init.snapshot()
		resp.Containers = append(resp.Containers, &runtimev1.ContainerInfo{Namespace: c.ns, ContainerId: c.id,
			Pid: uint32(pid), Status: c.status(ctx), DpuBundle: c.dpuBundle, ExecIds: execIDs})
	}
	return resp, nil
}

func (s *Service) Events(ctx context.Context, req *runtimev1.EventsRequest, srv runtimev1.Agent_EventsServer) error {
	return s.events.stream(ctx, req, srv.Send)
}

// Close releases what the service holds without touching containers: they
// keep running and a restarted agent re-adopts them.
func (s *Service) Close() error {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	return nil
}
