package plugin

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// Topics the agent publishes: only what the host alone can observe. The shim
// publishes create/start/delete/exec/paused events itself.
const (
	TopicTaskExit = "/tasks/exit"
	TopicTaskOOM  = "/tasks/oom"
)

// eventLog is an ordered, bounded log of published events. Sequence numbers
// start at the agent's boot time in nanoseconds, so they keep growing across
// agent restarts and a shim's after_seq from an earlier boot replays
// everything the new agent holds.
type eventLog struct {
	mu      sync.Mutex
	next    uint64
	held    []*runtimev1.Event // ascending seq, at most limit
	limit   int
	changed chan struct{} // closed and replaced on every append
}

func newEventLog(limit int) *eventLog {
	return &eventLog{
		next:    uint64(time.Now().UnixNano()),
		limit:   limit,
		changed: make(chan struct{}),
	}
}

// publish appends an event; the caller orders calls (see container.go).
func (l *eventLog) publish(ns, topic string, ev interface{}) (*runtimev1.Event, error) {
	a, err := typeurl.MarshalAnyToProto(ev)
	if err != nil {
		return nil, fmt.Errorf("marshal %s event: %w", topic, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	e := &runtimev1.Event{Seq: l.next, Namespace: ns, Topic: topic, Timestamp: timestamppb.Now(), Event: a}
	l.held = append(l.held, e)
	if len(l.held) > l.limit {
		l.held = slices.Delete(l.held, 0, len(l.held)-l.limit)
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return e, nil
}

// lastSeq is the newest sequence number assigned.
func (l *eventLog) lastSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// after returns held events with seq > seq and a channel closed on the next
// append.
func (l *eventLog) after(seq uint64) ([]*runtimev1.Event, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, _ := slices.BinarySearchFunc(l.held, seq+1, func(e *runtimev1.Event, s uint64) int {
		switch {
		case e.Seq < s:
			return -1
		case e.Seq > s:
			return 1
		}
		return 0
	})
	return slices.Clone(l.held[i:]), l.changed
}

// stream sends matching events after req.AfterSeq until ctx ends.
func (l *eventLog) stream(ctx context.Context, req *runtimev1.EventsRequest, send func(*runtimev1.Event) error) error {
	seq := req.AfterSeq
	for {
		evs, changed := l.after(seq)
		for _, e := range evs {
			seq = e.Seq
			if !eventMatches(req, e) {
				continue
			}
			if err := send(e); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func eventMatches(req *runtimev1.EventsRequest, e *runtimev1.Event) bool {
	if req.Namespace != "" && req.Namespace != e.Namespace {
		return false
	}
	if len(req.ContainerIds) == 0 {
		return true
	}
	v, err := typeurl.UnmarshalAny(e.Event)
	if err != nil {
		return false
	}
	var id string
	switch ev := v.(type) {
	case *eventsapi.TaskExit:
		id = ev.ContainerID
	case *eventsapi.TaskOOM:
		id = ev.ContainerID
	}
	return slices.Contains(req.ContainerIds, id)
}
