package shim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/fifo"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

const testNS = "shimtest"

// recorder is containerd's side of the event stream. check, when set, runs
// as each event is published (before the next one).
type recorder struct {
	mu     sync.Mutex
	events []events.Event
	check  func(events.Event)
	notify chan struct{}
}

func (r *recorder) Publish(ctx context.Context, topic string, e events.Event) error {
	if topicOf(e) != topic {
		return fmt.Errorf("topic %s for %T", topic, e)
	}
	if r.check != nil {
		r.check(e)
	}
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
	return nil
}

// topics returns the published topics, short names.
func (r *recorder) topics() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		t := strings.TrimPrefix(topicOf(e), "/tasks/")
		switch v := e.(type) {
		case *eventstypes.TaskExit:
			t += ":" + v.ID
		}
		out = append(out, t)
	}
	return out
}

// waitFor waits until the topics end with want's last element.
func (r *recorder) waitFor(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ts := r.topics(); len(ts) >= n {
			return ts
		}
		select {
		case <-r.notify:
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("only events %v, want %d", r.topics(), n)
	return nil
}

type harness struct {
	t     *testing.T
	agent *fakeAgent
	svc   *service
	rec   *recorder
	ctx   context.Context
	dir   string
	opts  *anypb.Any
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	a := newFakeAgent(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "shim.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf("agent_address = %q\n[timeouts]\nstdio_drain = \"10s\"\n", a.addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), testNS)
	ctx, sd := shutdown.WithShutdown(ctx)
	rec := &recorder{notify: make(chan struct{}, 1)}
	svc := newService(ctx, testNS, rec, sd)
	t.Cleanup(sd.Shutdown)
	return &harness{t: t, agent: a, svc: svc, rec: rec, ctx: ctx, dir: dir, opts: opts}
}

// bundle makes a bundle directory with a minimal config.json.
func (h *harness) bundle(id string) string {
	b := filepath.Join(h.dir, id)
	if err := os.MkdirAll(b, 0o700); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "config.json"), []byte(`{"ociVersion":"1.2.0"}`), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return b
}

func (h *harness) mkfifo(name string) string {
	p := filepath.Join(h.dir, name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// TestExitWaitsForStdoutDrain: the agent reports the exit while megabytes of
// stdout are still on the wire; the TaskExit must reach containerd only after
// the last byte is in the DPU-side file, and Exit must follow Start.
func TestExitWaitsForStdoutDrain(t *testing.T) {
	h := newHarness(t)
	out := filepath.Join(h.dir, "stdout.log")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	data := pattern(8 << 20)
	var sizeAtExit atomic.Int64
	sizeAtExit.Store(-1)
	h.rec.check = func(e events.Event) {
		if _, ok := e.(*eventstypes.TaskExit); ok {
			st, err := os.Stat(out)
			if err == nil {
				sizeAtExit.Store(st.Size())
			}
		}
	}
	h.agent.onStart = func(p *fakeProc) {
		// Exit reported before the reply to Start and before stdout is sent.
		h.agent.exit(p, 7)
		go func() {
			c := p.stream(t, runtimev1.StdioStream_STDOUT)
			for off := 0; off < len(data); off += 64 << 10 {
				c.Write(data[off:min(off+64<<10, len(data))])
			}
			c.Close()
		}()
	}
	b := h.bundle("c1")
	cr, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: b, Stdout: out, Options: h.opts})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b, bundleConfigName)); err != nil {
		t.Errorf("bundle config for delete not written: %v", err)
	}
	sr, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if sr.Pid != cr.Pid || sr.Pid == 0 {
		t.Errorf("start pid %d, create pid %d", sr.Pid, cr.Pid)
	}
	wr, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if wr.ExitStatus != 7 {
		t.Errorf("exit status %d, want 7", wr.ExitStatus)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Errorf("stdout content differs (%d bytes)", len(got))
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b, bundleConfigName)); !os.IsNotExist(err) {
		t.Errorf("bundle config copy still there after delete: %v", err)
	}
	want := []string{"create", "start", "exit:c1", "delete"}
	if got := h.rec.waitFor(t, 4); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if n := sizeAtExit.Load(); n != int64(len(data)) {
		t.Errorf("stdout file had %d bytes when TaskExit was published, want %d", n, len(data))
	}
}

// TestExitNotHeldByUnreadFIFO: stdout goes to a FIFO whose reader went away
// (ctr run -d after ctr exited); the shim's keep-alive read side keeps the
// FIFO open, as the runc shim's does, so the relay blocks. The TaskExit must
// not wait out stdio_drain for it, and the bytes are not dropped: a reader
// that comes later gets every one of them.
func TestExitNotHeldByUnreadFIFO(t *testing.T) {
	h := newHarness(t) // stdio_drain 10s
	stdout := h.mkfifo("out")
	ctx := context.Background()
	rd, err := fifo.OpenFifo(ctx, stdout, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(4 << 20)
	started := make(chan *fakeProc, 1)
	h.agent.onStart = func(p *fakeProc) {
		started <- p
		go func() {
			c := p.stream(t, runtimev1.StdioStream_STDOUT)
			c.Write(data) // blocks until a reader appears
			c.Close()
		}()
	}
	if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: h.bundle("c1"), Stdout: stdout, Options: h.opts}); err != nil {
		t.Fatal(err)
	}
	rd.Close() // the client's reader goes away
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	p := <-started
	time.Sleep(1500 * time.Millisecond) // the FIFO fills, the relay blocks
	exited := time.Now()
	h.agent.exit(p, 137)
	wctx, cancel := context.WithTimeout(h.ctx, 20*time.Second)
	defer cancel()
	wr, err := h.svc.Wait(wctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(exited); took > 3*time.Second || wr.ExitStatus != 137 {
		t.Errorf("TaskExit %d published %s after the agent's exit; want 137 within 3s", wr.ExitStatus, took.Round(time.Millisecond))
	}
	// A reader that comes now gets the whole stream, in order.
	rd2, err := os.OpenFile(stdout, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd2.Close()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(rd2); got <- b }()
	select {
	case b := <-got:
		if !bytes.Equal(b, data) {
			t.Errorf("late reader got %d bytes, want the %d written (equal=%v)", len(b), len(data), bytes.Equal(b, data))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("late reader did not reach EOF")
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
}

// TestFIFOStdioAndCloseIO: stdout through a FIFO read slowly (back-pressure,
// no loss); stdin bytes written before CloseIO all reach the host before EOF,
// and the client closing its writer alone is not EOF.
func TestFIFOStdioAndCloseIO(t *testing.T) {
	h := newHarness(t)
	stdin, stdout := h.mkfifo("in"), h.mkfifo("out")
	ctx := context.Background()
	rd, err := fifo.OpenFifo(ctx, stdout, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	wr, err := fifo.OpenFifo(ctx, stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(3 << 20)
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		b := make([]byte, 4096)
		for {
			n, err := rd.Read(b)
			buf.Write(b[:n])
			if err != nil {
				break
			}
			if buf.Len()%(256<<10) < 4096 {
				time.Sleep(5 * time.Millisecond) // a slow reader
			}
		}
		got <- buf.Bytes()
	}()
	stdinSeen := make(chan []byte, 1)
	h.agent.onStart = func(p *fakeProc) {
		go func() {
			in := p.stream(t, runtimev1.StdioStream_STDIN)
			o := p.stream(t, runtimev1.StdioStream_STDOUT)
			b, _ := io.ReadAll(in) // until the shim's half-close
			stdinSeen <- b
			o.Write(data)
			o.Close()
			h.agent.exit(p, 0)
		}()
	}
	b := h.bundle("c2")
	if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c2", Bundle: b, Stdin: stdin, Stdout: stdout, Options: h.opts}); err != nil {
		t.Fatal(err)
	}
	if p := h.agent.proc(testNS, "c2", ""); p == nil || !p.stdio.Stdin || !p.stdio.Stdout || p.stdio.Stderr {
		t.Fatalf("agent stdio config %+v, want stdin+stdout", p.stdio)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello from the DPU\n")
	wr.Write(msg)
	wr.Close()
	select {
	case b := <-stdinSeen:
		t.Fatalf("host saw stdin EOF (%q) before CloseIO", b)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := h.svc.CloseIO(h.ctx, &taskAPI.CloseIORequest{ID: "c2", Stdin: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-stdinSeen:
		if !bytes.Equal(b, msg) {
			t.Errorf("host stdin %q, want %q", b, msg)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no stdin EOF on the host after CloseIO")
	}
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, data) {
			t.Errorf("stdout: got %d bytes, want %d (equal=%v)", len(b), len(data), bytes.Equal(b, data))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stdout FIFO never reached EOF")
	}
}

// TestEventOrderExecOOM: ExecAdded→ExecStarted→Exit for an exec whose exit
// races its Start reply; OOM before the init's Exit; the exec's Exit before
// the init's; Delete last.
func TestEventOrderExecOOM(t *testing.T) {
	h := newHarness(t)
	h.agent.onStart = func(p *fakeProc) {
		if p.ref.ExecId != "" {
			h.agent.exit(p, 3) // exits before Start has replied
			time.Sleep(50 * time.Millisecond)
		}
	}
	b := h.bundle("c3")
	if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c3", Bundle: b, Options: h.opts}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	spec, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{}) // any payload; the fake ignores it
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c3", ExecID: "e1", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c3", ExecID: "e1", Spec: spec}); !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		t.Errorf("second exec e1: %v, want AlreadyExists", err)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c3", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	wr, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c3", ExecID: "e1"})
	if err != nil || wr.ExitStatus != 3 {
		t.Fatalf("exec wait: %v %v", wr, err)
	}
	pids, err := h.svc.Pids(h.ctx, &taskAPI.PidsRequest{ID: "c3"})
	if err != nil || len(pids.Processes) != 2 {
		t.Fatalf("pids: %v %v", pids, err)
	}
	var execInfo int
	for _, pi := range pids.Processes {
		if pi.Info != nil {
			execInfo++
		}
	}
	if execInfo != 1 {
		t.Errorf("pids carry %d exec infos, want 1", execInfo)
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c3", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Pause(h.ctx, &taskAPI.PauseRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Resume(h.ctx, &taskAPI.ResumeRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	init := h.agent.proc(testNS, "c3", "")
	h.agent.emit(testNS, "/tasks/oom", &eventstypes.TaskOOM{ContainerID: "c3"})
	h.agent.exit(init, 137)
	if wr, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c3"}); err != nil || wr.ExitStatus != 137 {
		t.Fatalf("init wait: %v %v", wr, err)
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"create", "start", "exec-added", "exec-started", "exit:e1", "paused", "resumed", "oom", "exit:c3", "delete"}
	if got := h.rec.waitFor(t, len(want)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events\n got %v\nwant %v", got, want)
	}
	if _, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "c3"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("state after delete: %v, want NotFound", err)
	}
}

// TestErrorsCrossAsErrdefs: an agent error keeps its errdefs class through
// the shim; Checkpoint is NotImplemented.
func TestErrorsCrossAsErrdefs(t *testing.T) {
	h := newHarness(t)
	b := h.bundle("c4")
	if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c4", Bundle: b, Options: h.opts}); err != nil {
		t.Fatal(err)
	}
	h.agent.killErr = fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	_, err := h.svc.Kill(h.ctx, &taskAPI.KillRequest{ID: "c4", Signal: 9})
	if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("kill: %v, want NotFound", err)
	}
	if _, err := h.svc.Checkpoint(h.ctx, &taskAPI.CheckpointTaskRequest{ID: "c4"}); !errdefs.IsNotImplemented(errgrpc.ToNative(err)) {
		t.Errorf("checkpoint: %v, want NotImplemented", err)
	}
	if _, err := h.svc.Kill(h.ctx, &taskAPI.KillRequest{ID: "nope"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("kill unknown: %v, want NotFound", err)
	}
	bad, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("agent_adress = \"unix:///x\"\n")})
	if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c5", Bundle: h.bundle("c5"), Options: bad}); !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("create with a misspelt key: %v, want InvalidArgument", err)
	}
	// The created-but-never-started init is deleted without an exit.
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c4"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"create", "delete"}
	if got := h.rec.waitFor(t, 2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if _, err := h.svc.Shutdown(h.ctx, &taskAPI.ShutdownRequest{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.svc.shutdown.Done():
	case <-time.After(5 * time.Second):
		t.Error("shutdown with no containers did not stop the shim")
	}
}

// TestBinaryLogger runs a real logger binary (a shell script) the way
// containerd's logging contract says: fds 3 and 4 carry stdout and stderr,
// fd 5 is the ready pipe, and the container's exit waits for the log.
func TestBinaryLogger(t *testing.T) {
	for _, scheme := range []string{"binary", "binary-v2"} {
		t.Run(scheme, func(t *testing.T) {
			h := newHarness(t)
			logger := filepath.Join(h.dir, "logger.sh")
			script := "#!/bin/sh\n/bin/cat <&3 >\"$2/out\" 4<&- 5>&- &\n/bin/cat <&4 >\"$2/err\" 3<&- 5>&- &\nexec 3<&- 4<&-\n" +
				"echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" >\"$2/env\"\n"
			if scheme == "binary-v2" {
				script += "printf r >&5\n"
			}
			script += "exec 5>&-\nwait\n"
			if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			uri := scheme + "://" + logger + "?dir=" + h.dir
			h.agent.onStart = func(p *fakeProc) {
				go func() {
					o := p.stream(t, runtimev1.StdioStream_STDOUT)
					e := p.stream(t, runtimev1.StdioStream_STDERR)
					o.Write([]byte("to stdout\n"))
					e.Write([]byte("to stderr\n"))
					o.Close()
					e.Close()
					h.agent.exit(p, 0)
				}()
			}
			b := h.bundle("lg")
			if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "lg", Bundle: b, Stdout: uri, Stderr: uri, Options: h.opts}); err != nil {
				t.Fatal(err)
			}
			if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "lg"}); err != nil {
				t.Fatal(err)
			}
			if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "lg"}); err != nil {
				t.Fatal(err)
			}
			if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "lg"}); err != nil {
				t.Fatal(err)
			}
			// Delete stopped the logger; it had flushed by then.
			for name, want := range map[string]string{"out": "to stdout\n", "err": "to stderr\n", "env": testNS + "/lg\n"} {
				got, err := os.ReadFile(filepath.Join(h.dir, name))
				if err != nil || string(got) != want {
					t.Errorf("logger %s: %q %v, want %q", name, got, err, want)
				}
			}
		})
	}
}

// TestBinaryV2LoggerNotReady: a binary-v2 logger that closes its ready pipe
// without the ready byte fails Create, and nothing is left on the host.
func TestBinaryV2LoggerNotReady(t *testing.T) {
	h := newHarness(t)
	logger := filepath.Join(h.dir, "bad.sh")
	if err := os.WriteFile(logger, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	uri := "binary-v2://" + logger
	_, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "bad", Bundle: h.bundle("bad"), Stdout: uri, Stderr: uri, Options: h.opts})
	if err == nil {
		t.Fatal("create succeeded with a logger that never became ready")
	}
	if h.agent.proc(testNS, "bad", "") != nil {
		t.Error("host container created although the DPU side failed first")
	}
	if _, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "bad"}); !errors.Is(errgrpc.ToNative(err), errdefs.ErrNotFound) {
		t.Errorf("state of failed create: %v", err)
	}
}

// TestStaleEventsNotReplayed: events the agent holds from before this shim
// connected (an earlier container "c6") are not published for the new "c6".
func TestStaleEventsNotReplayed(t *testing.T) {
	h := newHarness(t)
	h.agent.emit(testNS, "/tasks/oom", &eventstypes.TaskOOM{ContainerID: "c6"})
	h.agent.emit(testNS, "/tasks/exit", &eventstypes.TaskExit{ContainerID: "c6", ID: "c6", Pid: 1, ExitStatus: 9})
	if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c6", Bundle: h.bundle("c6"), Options: h.opts}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c6"}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(h.ctx, 300*time.Millisecond)
	defer cancel()
	if wr, err := h.svc.Wait(wctx, &taskAPI.WaitRequest{ID: "c6"}); err == nil {
		t.Fatalf("stale exit delivered: %v", wr)
	}
	h.agent.exit(h.agent.proc(testNS, "c6", ""), 0)
	if wr, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c6"}); err != nil || wr.ExitStatus != 0 {
		t.Fatalf("wait: %v %v", wr, err)
	}
	want := []string{"create", "start", "exit:c6"}
	if got := h.rec.waitFor(t, 3); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// TestManagerStop is `containerd-shim-offload-v1 delete` after the shim died:
// it force-deletes the host container through the agent named in the bundle.
func TestManagerStop(t *testing.T) {
	a := newFakeAgent(t)
	bundle := filepath.Join(t.TempDir(), "c9")
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), testNS)
	ctx = context.WithValue(ctx, cshim.OptsKey{}, cshim.Opts{BundlePath: bundle})
	m := NewManager(RuntimeName)

	// No config copy: Create never reached the agent (or Delete went
	// through the shim): nothing to do, no connection.
	st, err := m.Stop(ctx, "c9")
	if err != nil || st.ExitStatus != 137 {
		t.Fatalf("stop without config: %+v %v", st, err)
	}

	p := a.newProc(&runtimev1.ProcessRef{Namespace: testNS, ContainerId: "c9"}, &runtimev1.StdioConfig{})
	cfg := &Config{AgentAddress: a.addr}
	cfg.setDefaults()
	b, _ := cfg.Marshal()
	if err := os.WriteFile(filepath.Join(bundle, bundleConfigName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err = m.Stop(ctx, "c9")
	if err != nil {
		t.Fatal(err)
	}
	if a.forced != 1 {
		t.Errorf("%d forced deletes, want 1", a.forced)
	}
	if st.Pid != int(p.pid) || a.proc(testNS, "c9", "") != nil {
		t.Errorf("stop: %+v; host container still there: %v", st, a.proc(testNS, "c9", "") != nil)
	}
	// Again: the agent says NotFound, delete still succeeds.
	if st, err := m.Stop(ctx, "c9"); err != nil || st.ExitStatus != 137 {
		t.Errorf("second stop: %+v %v", st, err)
	}
}
