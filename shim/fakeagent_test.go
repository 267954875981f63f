package shim

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
	"github.com/dpu-offload/offload/api/transport"
)

// fakeAgent is an in-process stand-in for offload-agent's runtime executor,
// served over a real unix socket through package transport, so the shim's
// real connections, framing and copies are exercised. Process behaviour is
// scripted by the test through hooks.
type fakeAgent struct {
	t    *testing.T
	addr string
	mux  *transport.Mux

	mu      sync.Mutex
	nextPid uint32
	seq     uint64
	procs   map[string]*fakeProc
	subs    []chan *runtimev1.Event
	held    []*runtimev1.Event

	// onStart runs inside Start before it replies (the process "runs").
	onStart func(p *fakeProc)
	// killErr, when set, is returned by Kill.
	killErr error
	// forced counts Delete calls with force.
	forced int
}

type fakeProc struct {
	key     string
	ref     *runtimev1.ProcessRef
	pid     uint32
	stdio   *runtimev1.StdioConfig
	streams map[runtimev1.StdioStream]chan net.Conn
	exited  bool
	status  uint32
}

func procKey(r *runtimev1.ProcessRef) string {
	return r.Namespace + "/" + r.ContainerId + "/" + r.ExecId
}

func newFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	addr, err := transport.ParseAddress("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	mux, err := transport.Listen(context.Background(), addr, transport.Security{})
	if err != nil {
		t.Fatal(err)
	}
	a := &fakeAgent{t: t, addr: addr.String(), mux: mux, nextPid: 1000, procs: map[string]*fakeProc{}}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	runtimev1.RegisterAgentService(srv, a)
	rl := mux.Channel(transport.ChannelRuntime)
	sl := mux.Channel(transport.ChannelStdio)
	go srv.Serve(context.Background(), rl)
	go a.serveStdio(sl)
	go mux.Serve()
	t.Cleanup(func() {
		srv.Close()
		mux.Close()
	})
	return a
}

func (a *fakeAgent) serveStdio(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			var att runtimev1.StdioAttach
			if err := readFrame(c, &att); err != nil {
				c.Close()
				return
			}
			a.mu.Lock()
			p := a.procs[procKey(att.Process)]
			a.mu.Unlock()
			if p == nil {
				writeFrame(c, &runtimev1.StdioAttachResponse{Error: "no such process"})
				c.Close()
				return
			}
			writeFrame(c, &runtimev1.StdioAttachResponse{})
			p.streams[att.Stream] <- c
		}()
	}
}

// stream waits for the shim to attach a stream of p.
func (p *fakeProc) stream(t *testing.T, s runtimev1.StdioStream) net.Conn {
	t.Helper()
	select {
	case c := <-p.streams[s]:
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("shim did not attach %s of %s", s, p.key)
		return nil
	}
}

func (a *fakeAgent) proc(ns, id, exec string) *fakeProc {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.procs[ns+"/"+id+"/"+exec]
}

func (a *fakeAgent) newProc(ref *runtimev1.ProcessRef, sio *runtimev1.StdioConfig) *fakeProc {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nextPid++
	p := &fakeProc{key: procKey(ref), ref: ref, pid: a.nextPid, stdio: sio, streams: map[runtimev1.StdioStream]chan net.Conn{}}
	for _, s := range []runtimev1.StdioStream{runtimev1.StdioStream_STDIN, runtimev1.StdioStream_STDOUT, runtimev1.StdioStream_STDERR} {
		p.streams[s] = make(chan net.Conn, 1)
	}
	a.procs[p.key] = p
	return p
}

// emit sends an event (TaskExit or TaskOOM) to every subscriber, in order.
func (a *fakeAgent) emit(ns, topic string, v any) {
	any, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seq++
	ev := &runtimev1.Event{Seq: a.seq, Namespace: ns, Topic: topic, Event: any, Timestamp: protobuf.ToTimestamp(time.Now())}
	a.held = append(a.held, ev)
	for _, s := range a.subs {
		s <- ev
	}
}

// exit marks p exited and emits its TaskExit.
func (a *fakeAgent) exit(p *fakeProc, status uint32) {
	a.mu.Lock()
	p.exited, p.status = true, status
	a.mu.Unlock()
	id := p.ref.ExecId
	if id == "" {
		id = p.ref.ContainerId
	}
	a.emit(p.ref.Namespace, "/tasks/exit", &eventstypes.TaskExit{
		ContainerID: p.ref.ContainerId, ID: id, Pid: p.pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(time.Now()),
	})
}

func (a *fakeAgent) Hello(ctx context.Context, r *runtimev1.HelloRequest) (*runtimev1.HelloResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return &runtimev1.HelloResponse{ProtocolVersion: 1, AgentVersion: "fake", LastSeq: a.seq}, nil
}

func (a *fakeAgent) Create(ctx context.Context, r *runtimev1.CreateRequest) (*runtimev1.CreateResponse, error) {
	p := a.newProc(&runtimev1.ProcessRef{Namespace: r.Namespace, ContainerId: r.ContainerId}, r.Stdio)
	return &runtimev1.CreateResponse{Pid: p.pid}, nil
}

func (a *fakeAgent) Start(ctx context.Context, r *runtimev1.ProcessRef) (*runtimev1.StartResponse, error) {
	p := a.proc(r.Namespace, r.ContainerId, r.ExecId)
	if p == nil {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	if a.onStart != nil {
		a.onStart(p)
	}
	return &runtimev1.StartResponse{Pid: p.pid}, nil
}

func (a *fakeAgent) Delete(ctx context.Context, r *runtimev1.DeleteRequest) (*runtimev1.DeleteResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.Force {
		a.forced++
	}
	p := a.procs[procKey(r.Process)]
	if p == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: %s", errdefs.ErrNotFound, procKey(r.Process)))
	}
	delete(a.procs, p.key)
	return &runtimev1.DeleteResponse{Pid: p.pid, ExitStatus: p.status, ExitedAt: protobuf.ToTimestamp(time.Now())}, nil
}

func (a *fakeAgent) Exec(ctx context.Context, r *runtimev1.ExecRequest) (*emptypb.Empty, error) {
	a.newProc(r.Process, r.Stdio)
	return &emptypb.Empty{}, nil
}

func (a *fakeAgent) State(ctx context.Context, r *runtimev1.ProcessRef) (*runtimev1.StateResponse, error) {
	p := a.proc(r.Namespace, r.ContainerId, r.ExecId)
	if p == nil {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	return &runtimev1.StateResponse{Pid: p.pid, Status: runtimev1.Status_RUNNING}, nil
}

func (a *fakeAgent) Pids(ctx context.Context, r *runtimev1.ProcessRef) (*runtimev1.PidsResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*runtimev1.ProcessInfo
	for _, p := range a.procs {
		if p.ref.ContainerId == r.ContainerId {
			out = append(out, &runtimev1.ProcessInfo{Pid: p.pid, ExecId: p.ref.ExecId})
		}
	}
	return &runtimev1.PidsResponse{Processes: out}, nil
}

func (a *fakeAgent) Pause(ctx context.Context, r *runtimev1.ProcessRef) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *fakeAgent) Resume(ctx context.Context, r *runtimev1.ProcessRef) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *fakeAgent) Kill(ctx context.Context, r *runtimev1.KillRequest) (*emptypb.Empty, error) {
	if a.killErr != nil {
		return nil, errgrpc.ToGRPC(a.killErr)
	}
	return &emptypb.Empty{}, nil
}

func (a *fakeAgent) ResizePty(ctx context.Context, r *runtimev1.ResizePtyRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *fakeAgent) CloseIO(ctx context.Context, r *runtimev1.CloseIORequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *fakeAgent) Update(ctx context.Context, r *runtimev1.UpdateRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (a *fakeAgent) Wait(ctx context.Context, r *runtimev1.ProcessRef) (*runtimev1.WaitResponse, error) {
	return nil, errgrpc.ToGRPC(errdefs.ErrNotImplemented)
}

func (a *fakeAgent) Stats(ctx context.Context, r *runtimev1.ProcessRef) (*runtimev1.StatsResponse, error) {
	return nil, errgrpc.ToGRPC(errdefs.ErrNotImplemented)
}

func (a *fakeAgent) List(ctx context.Context, r *runtimev1.ListRequest) (*runtimev1.ListResponse, error) {
	return &runtimev1.ListResponse{}, nil
}

func (a *fakeAgent) Events(ctx context.Context, r *runtimev1.EventsRequest, srv runtimev1.Agent_EventsServer) error {
	ch := make(chan *runtimev1.Event, 1024)
	a.mu.Lock()
	for _, ev := range a.held {
		if ev.Seq > r.AfterSeq {
			ch <- ev
		}
	}
	a.subs = append(a.subs, ch)
	a.mu.Unlock()
	for {
		select {
		case ev := <-ch:
			if err := srv.Send(ev); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}
