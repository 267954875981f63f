package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// receiveEvents reads the agent's event stream and hands each event to its
// container's queue without blocking. When the stream breaks while the shim
// still serves containers, it re-subscribes after the last sequence number.
func (s *service) receiveEvents(link *agentLink, stream runtimev1.Agent_EventsClient) {
	ctx := s.ctx
	for {
		ev, err := stream.Recv()
		if err != nil {
			select {
			case <-s.shutdown.Done():
				return
			default:
			}
			if !errors.Is(err, io.EOF) {
				log.G(ctx).WithError(err).Warn("agent event stream ended")
			}
			link.Close()
			go s.resubscribe()
			return
		}
		s.linkMu.Lock()
		if ev.Seq <= s.lastSeq && ev.Seq != 0 {
			s.linkMu.Unlock()
			continue // replayed twice
		}
		s.lastSeq = ev.Seq
		s.linkMu.Unlock()

		v, id, err := decodeAgentEvent(ev)
		if err != nil {
			log.G(ctx).WithError(err).WithFields(log.Fields{"topic": ev.Topic, "seq": ev.Seq}).Warn("ignoring agent event")
			continue
		}
		s.mu.Lock()
		c := s.containers[id]
		s.mu.Unlock()
		if c == nil {
			log.G(ctx).WithFields(log.Fields{"topic": ev.Topic, "id": id, "seq": ev.Seq}).Debug("agent event for a container this shim does not hold")
			continue
		}
		c.events.push(v)
	}
}

// resubscribe re-dials the agent after a lost connection, with backoff, for
// as long as the shim holds containers.
func (s *service) resubscribe() {
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-s.shutdown.Done():
			return
		default:
		}
		s.mu.Lock()
		n := len(s.containers)
		s.mu.Unlock()
		if n == 0 {
			return // the next Create dials again
		}
		if _, err := s.agent(s.ctx, nil); err == nil {
			return
		} else {
			log.G(s.ctx).WithError(err).Warn("reconnect to offload-agent")
		}
		select {
		case <-time.After(backoff):
		case <-s.shutdown.Done():
			return
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// decodeAgentEvent decodes an event from the agent's stream: a TaskExit on
// /tasks/exit or a TaskOOM on /tasks/oom, naming a container. Anything else
// is an error (the bytes come from the other side of the wire).
func decodeAgentEvent(ev *runtimev1.Event) (any, string, error) {
	if ev.GetEvent() == nil {
		return nil, "", errors.New("event without payload")
	}
	v, err := typeurl.UnmarshalAny(ev.Event)
	if err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", ev.Event.GetTypeUrl(), err)
	}
	var id string
	switch e := v.(type) {
	case *eventstypes.TaskExit:
		if ev.Topic != runtime.TaskExitEventTopic {
			return nil, "", fmt.Errorf("TaskExit on topic %q", ev.Topic)
		}
		id = e.ContainerID
	case *eventstypes.TaskOOM:
		if ev.Topic != runtime.TaskOOMEventTopic {
			return nil, "", fmt.Errorf("TaskOOM on topic %q", ev.Topic)
		}
		id = e.ContainerID
	default:
		return nil, "", fmt.Errorf("unexpected event type %T on %q", v, ev.Topic)
	}
	if id == "" {
		return nil, "", errors.New("event without container id")
	}
	return v, id, nil
}

// handleEvents publishes one container's agent events in order.
func (s *service) handleEvents(c *container) {
	for {
		v, ok := c.events.pop()
		if !ok {
			return
		}
		switch e := v.(type) {
		case *eventstypes.TaskOOM:
			ctx, cancel := s.ctxUntil(c)
			ok := c.init.waitGate(ctx)
			cancel()
			if ok {
				s.send(&eventstypes.TaskOOM{ContainerID: c.id})
			}
		case *eventstypes.TaskExit:
			s.handleExit(c, e)
		}
	}
}

// ctxUntil is cancelled when the container is removed from the shim.
func (s *service) ctxUntil(c *container) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(s.ctx)
	go func() {
		select {
		case <-c.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	return ctx, cancel
}

// handleExit publishes a process's TaskExit after the events that must
// precede it and after its stdout and stderr have drained.
func (s *service) handleExit(c *container, e *eventstypes.TaskExit) {
	execID := e.ID
	if execID == c.id {
		execID = ""
	}
	p := c.process(execID)
	if p == nil {
		log.G(s.ctx).WithFields(log.Fields{"id": c.id, "exec": e.ID}).Debug("exit of an unknown process")
		return
	}
	ctx, cancel := s.ctxUntil(c)
	defer cancel()
	if !p.waitGate(ctx) {
		return
	}
	p.mu.Lock()
	started, pid := p.started, p.pid
	p.mu.Unlock()
	if !started {
		return
	}
	if pid != 0 && e.Pid != 0 && e.Pid != pid {
		// A replayed exit of an earlier container with the same ID.
		log.G(s.ctx).WithFields(log.Fields{"id": c.id, "exec": e.ID, "pid": e.Pid, "want": pid}).Debug("dropping stale exit")
		return
	}
	if p.relay != nil {
		drain, stall := 5*time.Second, time.Second
		if l := s.currentLink(); l != nil {
			drain, stall = l.cfg.Timeouts.StdioDrain.D(), l.cfg.Timeouts.StdioStall.D()
		}
		if !p.relay.waitOutputs(drain, stall) {
			log.G(s.ctx).WithFields(log.Fields{"id": c.id, "exec": execID}).Infof("stdout/stderr not drained (nobody reading, or still open %s after exit); publishing exit", drain)
		}
	}
	exitedAt := protobuf.FromTimestamp(e.ExitedAt)
	if e.ExitedAt == nil {
		exitedAt = time.Now()
	}
	// Queue the event before Wait can return, so Delete follows Exit.
	if !p.claimExit() {
		return
	}
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          p.id(),
		Pid:         pid,
		ExitStatus:  e.ExitStatus,
		ExitedAt:    protobuf.ToTimestamp(exitedAt),
	})
	p.setExited(e.ExitStatus, exitedAt)
}

func (s *service) currentLink() *agentLink {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	return s.link
}
