package plugin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// container is one runc container: its host bundle and rootfs mount, the
// init process and its exec processes.
type container struct {
	s         *Service
	ns, id    string
	bundle    string
	rootfs    string
	dpuBundle string
	runc      *runc.Runc
	hostPID   bool // no pid namespace: execs survive the init unless killed

	mu    sync.Mutex
	init  *process
	execs map[string]*process
	cg    *containerCgroup
	stop  func() // stops the OOM watch
	// paused is set by Pause and cleared by Resume, so State and List need
	// no `runc state` (a fork+exec) per container.
	paused bool

	// eventMu orders this container's events: OOM before exit, execs'
	// exits before the init's.
	eventMu         sync.Mutex
	oomReported     uint64
	initExitPending bool
}

func (s *Service) newRunc(ns, bundle string) *runc.Runc {
	return &runc.Runc{
		Command:      s.cfg.RuncBinary,
		Root:         filepath.Join(s.cfg.RuncRoot, ns),
		Log:          filepath.Join(bundle, "log.json"),
		LogFormat:    runc.JSON,
		PdeathSignal: unix.SIGKILL,
	}
}

// runcError adds runc's own last error line from log.json to err.
func (c *container) runcError(err error) error {
	f, ferr := os.Open(filepath.Join(c.bundle, "log.json"))
	if ferr != nil {
		return err
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Level == "error" {
			last = l.Msg
		}
	}
	if last == "" {
		return err
	}
	return fmt.Errorf("%s: %w", last, err)
}

// create mounts the rootfs, writes the bundle and runs `runc create`.
func (c *container) create(ctx context.Context, req *runtimev1.CreateRequest) (retErr error) {
	mounts := req.Rootfs
	if len(mounts) == 0 {
		// `ctr run --rootfs DIR`: no mounts, the spec's root is a host
		// directory; bind it (the same checks apply).
		var root struct {
			Root *specs.Root `json:"root"`
		}
		if err := json.Unmarshal(req.Spec, &root); err != nil || root.Root == nil || !filepath.IsAbs(root.Root.Path) {
			return fmt.Errorf("no rootfs mounts and no absolute root.path: %w", errdefs.ErrInvalidArgument)
		}
		mounts = []*runtimev1.Mount{{Type: "bind", Source: root.Root.Path, Options: []string{"rbind"}}}
	}
	pm, err := c.s.policy.prepareRootfs(mounts)
	if err != nil {
		return err
	}
	defer pm.release()
	spec, err := c.s.prepareSpec(ctx, req.Spec, c.rootfs)
	if err != nil {
		return err
	}
	c.hostPID = !hasNamespace(spec, specs.PIDNamespace)

	if err := os.MkdirAll(c.rootfs, 0o711); err != nil {
		return fmt.Errorf("make bundle: %w", err)
	}
	defer func() {
		if retErr != nil {
			c.removeBundle(ctx)
		}
	}()
	if err := mountRootfs(pm, c.rootfs); err != nil {
		return err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.bundle, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("write config.json: %w", err)
	}

	pio, err := newProcessIO(req.Stdio)
	if err != nil {
		return err
	}
	init := newProcess(c, "", pio)
	defer func() {
		if retErr != nil {
			pio.Close()
		}
	}()
	c.s.starting.RLock()
	defer c.s.starting.RUnlock()
	pidFile := filepath.Join(c.bundle, "init.pid")
	opts := &runc.CreateOpts{IO: pio, PidFile: pidFile}
	if pio.consoleSocket != nil {
		opts.ConsoleSocket = pio.consoleSocket
	}
	if err := c.runc.Create(ctx, c.id, c.bundle, opts); err != nil {
		c.runc.Delete(context.WithoutCancel(ctx), c.id, &runc.DeleteOpts{Force: true})
		return fmt.Errorf("runc create: %w", c.runcError(err))
	}
	if err := pio.receiveConsole(); err != nil {
		c.runc.Delete(context.WithoutCancel(ctx), c.id, &runc.DeleteOpts{Force: true})
		return err
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		c.runc.Delete(context.WithoutCancel(ctx), c.id, &runc.DeleteOpts{Force: true})
		return fmt.Errorf("read init pid: %w", err)
	}
	if cg, err := loadCgroup(pid); err != nil {
		log.G(ctx).WithError(err).Warnf("container %s/%s: no cgroup; stats and OOM events unavailable", c.ns, c.id)
	} else {
		c.cg = cg
		c.oomReported, _ = cg.oomKills()
		if stop, err := cg.watchOOM(c.oomNotified); err != nil {
			log.G(ctx).WithError(err).Warnf("container %s/%s: OOM watch", c.ns, c.id)
		} else {
			c.stop = stop
		}
	}
	c.mu.Lock()
	c.init = init
	c.mu.Unlock()
	if err := init.started(pid, false); err != nil {
		if c.stop != nil {
			c.stop()
		}
		c.runc.Delete(context.WithoutCancel(ctx), c.id, &runc.DeleteOpts{Force: true})
		return err
	}
	return nil
}

func hasNamespace(spec *specs.Spec, t specs.LinuxNamespaceType) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == t && ns.Path == "" {
			return true
		}
	}
	return false
}

// removeBundle unmounts the rootfs and removes the bundle directory.
func (c *container) removeBundle(ctx context.Context) error {
	var errs []error
	if err := unmountRootfs(c.rootfs); err != nil {
		errs = append(errs, err)
	}
	if isMountPoint(c.rootfs) {
		errs = append(errs, fmt.Errorf("rootfs %s still mounted", c.rootfs))
	} else if err := os.RemoveAll(c.bundle); err != nil {
		errs = append(errs, fmt.Errorf("remove bundle: %w", err))
	}
	os.Remove(filepath.Dir(c.bundle)) // the namespace dir, if empty
	if err := errors.Join(errs...); err != nil {
		log.G(ctx).WithError(err).Errorf("container %s/%s: bundle cleanup", c.ns, c.id)
		return err
	}
	return nil
}

// oomNotified runs on every OOM notification of the cgroup.
func (c *container) oomNotified() {
	c.eventMu.Lock()
	defer c.eventMu.Unlock()
	c.publishOOMLocked(true)
}

// publishOOMLocked publishes one TaskOOM when the cgroup's OOM-kill counter
// grew since the last one. notified means the kernel signalled an OOM even
// if no counter is readable.
func (c *container) publishOOMLocked(notified bool) {
	if c.cg == nil {
		return
	}
	n, ok := c.cg.oomKills()
	switch {
	case ok && n > c.oomReported:
		c.oomReported = n
	case !ok && notified:
	default:
		return
	}
	if _, err := c.s.events.publish(c.ns, TopicTaskOOM, &eventsapi.TaskOOM{ContainerID: c.id}); err != nil {
		log.L.WithError(err).Error("publish TaskOOM")
	}
}

// processExited runs in the process's watch goroutine once it is reaped. It
// records the exit, waits for attached output to drain, then publishes in
// order: a pending TaskOOM, then this TaskExit — except that an init's
// TaskExit waits until every started exec's TaskExit is out.
func (c *container) processExited(p *process, info exitInfo) {
	p.setExited(info)
	log.L.Debugf("process %s (pid %d) exited with %d", p.name(), p.pid, info.Status)
	if p.isInit() && c.hostPID {
		// Without a pid namespace the kernel does not end the execs with the
		// init; do what runc's shim does.
		for _, e := range c.startedExecs() {
			e.signal(unix.SIGKILL)
		}
	}
	p.drain(c.s.cfg.drainTimeout, c.s.cfg.drainStall)

	c.eventMu.Lock()
	defer c.eventMu.Unlock()
	c.publishOOMLocked(false)
	if p.isInit() {
		for _, e := range c.startedExecs() {
			if !e.published {
				c.initExitPending = true
				return
			}
		}
		c.publishExitLocked(p)
		return
	}
	c.publishExitLocked(p)
	if c.initExitPending {
		for _, e := range c.startedExecs() {
			if !e.published {
				return
			}
		}
		c.initExitPending = false
		c.publishExitLocked(c.init)
	}
}

func (c *container) startedExecs() []*process {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*process
	for _, e := range c.execs {
		e.mu.Lock()
		if e.pid != 0 {
			out = append(out, e)
		}
		e.mu.Unlock()
	}
	return out
}

func (c *container) publishExitLocked(p *process) {
	if p.published {
		return
	}
	_, pid, exit := p.snapshot()
	id := p.id
	if id == "" {
		id = c.id
	}
	ev := &eventsapi.TaskExit{ContainerID: c.id, ID: id, Pid: uint32(pid), ExitStatus: exit.Status,
		ExitedAt: timestamppb.New(exit.ExitedAt)}
	if _, err := c.s.events.publish(c.ns, TopicTaskExit, ev); err != nil {
		log.L.WithError(err).Error("publish TaskExit")
	}
	p.published = true
	close(p.publishedDone)
}

// status is the init's status; PAUSED while paused.
func (c *container) status(ctx context.Context) runtimev1.Status {
	c.mu.Lock()
	init, paused := c.init, c.paused
	c.mu.Unlock()
	if init == nil {
		return runtimev1.Status_UNKNOWN
	}
	st, _, _ := init.snapshot()
	if st == runtimev1.Status_RUNNING && paused {
		return runtimev1.Status_PAUSED
	}
	return st
}

func (c *container) setPaused(p bool) {
	c.mu.Lock()
	c.paused = p
	c.mu.Unlock()
}

// runcStatus maps runc's state names.
func runcStatus(status string, def runtimev1.Status) runtimev1.Status {
	switch status {
	case "created":
		return runtimev1.Status_CREATED
	case "running":
		return runtimev1.Status_RUNNING
	case "paused":
		return runtimev1.Status_PAUSED
	case "pausing":
		return runtimev1.Status_PAUSING
	case "stopped":
		return runtimev1.Status_STOPPED
	}
	return def
}

func (c *container) process(execID string) (*process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if execID == "" {
		if c.init == nil {
			return nil, fmt.Errorf("container %s/%s has no init: %w", c.ns, c.id, errdefs.ErrNotFound)
		}
		return c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q in %s/%s: %w", execID, c.ns, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// start runs `runc start` for the init, or `runc exec --detach` for an exec.
func (c *container) start(ctx context.Context, p *process) (int, error) {
	p.mu.Lock()
	st, pid, busy := p.status, p.pid, p.starting
	if st == runtimev1.Status_CREATED && !busy {
		p.starting = true
	}
	p.mu.Unlock()
	if st != runtimev1.Status_CREATED || busy {
		return 0, fmt.Errorf("process %s is %s, not created (or already starting): %w", p.name(), st, errdefs.ErrFailedPrecondition)
	}
	defer func() {
		p.mu.Lock()
		p.starting = false
		p.mu.Unlock()
	}()
	if p.isInit() {
		if err := c.runc.Start(ctx, c.id); err != nil {
			return 0, fmt.Errorf("runc start: %w", c.runcError(err))
		}
		p.setRunning()
		return pid, nil
	}
	if c.status(ctx) == runtimev1.Status_STOPPED {
		return 0, fmt.Errorf("container %s/%s is stopped: %w", c.ns, c.id, errdefs.ErrFailedPrecondition)
	}
	c.s.starting.RLock()
	defer c.s.starting.RUnlock()
	pidFile := filepath.Join(c.bundle, p.id+".pid")
	opts := &runc.ExecOpts{IO: p.io, PidFile: pidFile, Detach: true}
	if p.io.consoleSocket != nil {
		opts.ConsoleSocket = p.io.consoleSocket
	}
	if err := c.runc.Exec(ctx, c.id, *p.spec, opts); err != nil {
		return 0, fmt.Errorf("runc exec: %w", c.runcError(err))
	}
	if err := p.io.receiveConsole(); err != nil {
		return 0, err
	}
	pid, err := runc.ReadPidFile(pidFile)
	os.Remove(pidFile)
	if err != nil {
		return 0, fmt.Errorf("read exec pid: %w", err)
	}
	if err := p.started(pid, true); err != nil {
		return 0, err
	}
	return pid, nil
}

// kill signals the init through runc, or an exec through its pidfd.
func (c *container) kill(ctx context.Context, p *process, sig uint32, all bool) error {
	if !p.isInit() {
		return p.signal(unix.Signal(sig))
	}
	st, _, _ := p.snapshot()
	if st == runtimev1.Status_STOPPED && !all {
		return fmt.Errorf("process %s already finished: %w", p.name(), errdefs.ErrNotFound)
	}
	if err := c.runc.Kill(ctx, c.id, int(sig), &runc.KillOpts{All: all}); err != nil {
		err = c.runcError(err)
		if strings.Contains(err.Error(), "not running") || strings.Contains(err.Error(), "does not exist") {
			return fmt.Errorf("process %s already finished: %w", p.name(), errdefs.ErrNotFound)
		}
		return fmt.Errorf("runc kill: %w", err)
	}
	return nil
}

// deleteProcess removes an exec, or the whole container for the init. A
// running process is refused unless force, which kills it first. It
// returns after the process's TaskExit has been published, so an exit is
// never relayed after the shim's TaskDelete.
func (c *container) deleteProcess(ctx context.Context, p *process, force bool) (*runtimev1.DeleteResponse, error) {
	st, pid, _ := p.snapshot()
	if st == runtimev1.Status_RUNNING {
		if !force {
			return nil, fmt.Errorf("process %s is running: %w", p.name(), errdefs.ErrFailedPrecondition)
		}
		if p.isInit() {
			c.runc.Kill(ctx, c.id, int(unix.SIGKILL), &runc.KillOpts{All: true})
			c.runc.Resume(ctx, c.id) // a frozen cgroup holds SIGKILL back
			c.setPaused(false)
		} else {
			p.signal(unix.SIGKILL)
		}
	}
	if p.isInit() {
		// runc delete ends a created (never started) init too.
		if err := c.runc.Delete(ctx, c.id, &runc.DeleteOpts{Force: force || st == runtimev1.Status_CREATED}); err != nil {
			rs, serr := c.runc.State(ctx, c.id)
			if serr == nil && rs.Status != "stopped" {
				return nil, fmt.Errorf("runc delete: %w", c.runcError(err))
			}
		}
	}
	if pid != 0 {
		wctx, cancel := context.WithTimeout(ctx, c.s.cfg.drainTimeout+10*time.Second)
		defer cancel()
		select {
		case <-p.publishedDone:
		case <-wctx.Done():
			return nil, fmt.Errorf("process %s did not exit: %w", p.name(), context.DeadlineExceeded)
		}
	} else if !p.isInit() {
		p.setExited(exitInfo{Status: 0, ExitedAt: time.Now()})
	}
	_, _, exit := p.snapshot()
	p.io.Close()
	resp := &runtimev1.DeleteResponse{Pid: uint32(pid), ExitStatus: exit.Status, ExitedAt: timestamppb.New(exit.ExitedAt)}
	if !p.isInit() {
		c.mu.Lock()
		delete(c.execs, p.id)
		c.mu.Unlock()
		return resp, nil
	}
	c.mu.Lock()
	execs := c.execs
	c.execs = nil
	c.mu.Unlock()
	for _, e := range execs {
		e.io.Close()
	}
	if c.stop != nil {
		c.stop()
	}
	if c.hostPID && c.cg != nil {
		c.s.retire(c.cg)
	}
	if err := c.removeBundle(ctx); err != nil {
		return nil, err
	}
	c.s.removeState(c.ns, c.id)
	return resp, nil
}
