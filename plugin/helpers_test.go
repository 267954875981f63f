package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

const testNS = "plugintest"

func runcBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("OFFLOAD_RUNC"), "/var/cache/dpu-offload/bin/runc"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	t.Skip("runc not found (run tests/testbed/provision)")
	return ""
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

var subreaperOnce sync.Once

// agent is a Service served over real unix sockets: ttrpc on one, the stdio
// channel on another, as offload-agent serves them.
type agent struct {
	t       *testing.T
	svc     *Service
	client  runtimev1.AgentClient
	dir     string // allowed mount prefix holding the images
	base    string // busybox rootfs (overlay lowerdir)
	stdioL  string
	cfg     Config
	closers []func()
}

func newAgent(t *testing.T) *agent {
	t.Helper()
	requireRoot(t)
	rb := runcBinary(t)
	subreaperOnce.Do(func() {
		if err := SetSubreaper(); err != nil {
			t.Fatal(err)
		}
		if !testing.Verbose() {
			log.SetLevel("warn")
		}
	})
	root := t.TempDir()
	a := &agent{t: t, dir: filepath.Join(root, "snapshots")}
	a.base = filepath.Join(a.dir, "base")
	makeBusyboxRootfs(t, a.base)
	a.cfg = Config{
		StateDir:             filepath.Join(root, "state"),
		BundleDir:            filepath.Join(root, "bundles"),
		RuncBinary:           rb,
		RuncRoot:             filepath.Join(root, "runc"),
		AllowedMountPrefixes: []string{a.dir},
		DrainTimeout:         "5s",
		AgentVersion:         "test",
	}
	a.start()
	t.Cleanup(a.close)
	return a
}

func (a *agent) start() {
	t := a.t
	svc, err := New(log.WithLogger(context.Background(), log.L), a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.svc = svc
	sockDir := t.TempDir()
	rl, err := net.Listen("unix", filepath.Join(sockDir, "runtime.sock"))
	if err != nil {
		t.Fatal(err)
	}
	a.stdioL = filepath.Join(sockDir, "stdio.sock")
	sl, err := net.Listen("unix", a.stdioL)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	runtimev1.RegisterAgentService(srv, svc)
	go srv.Serve(context.Background(), rl)
	go svc.ServeStdio(sl)
	conn, err := net.Dial("unix", filepath.Join(sockDir, "runtime.sock"))
	if err != nil {
		t.Fatal(err)
	}
	cl := ttrpc.NewClient(conn)
	a.client = runtimev1.NewAgentClient(cl)
	a.closers = append(a.closers, func() { cl.Close(); srv.Close(); sl.Close(); svc.Close() })
}

// stop closes the servers but leaves containers running (agent restart).
func (a *agent) stop() {
	for _, c := range a.closers {
		c()
	}
	a.closers = nil
}

func (a *agent) close() {
	ctx := context.Background()
	if a.client != nil {
		if l, err := a.client.List(ctx, &runtimev1.ListRequest{}); err == nil {
			for _, c := range l.Containers {
				a.client.Delete(ctx, &runtimev1.DeleteRequest{Process: &runtimev1.ProcessRef{Namespace: c.Namespace, ContainerId: c.ContainerId}, Force: true})
			}
		}
	}
	a.stop()
	// Anything left is a bug the test reports; still clean the host.
	if ents, _ := os.ReadDir(filepath.Join(a.cfg.RuncRoot, testNS)); len(ents) > 0 {
		for _, e := range ents {
			exec.Command(a.cfg.RuncBinary, "--root", filepath.Join(a.cfg.RuncRoot, testNS), "delete", "--force", e.Name()).Run()
		}
	}
	// runc leaves the parent cgroup of the containers' cgroupsPath.
	if dirs, _ := filepath.Glob("/sys/fs/cgroup/*/offload-plugintest"); len(dirs) > 0 {
		for _, d := range dirs {
			os.Remove(d)
		}
	}
	filepath.Walk(a.cfg.BundleDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() && filepath.Base(p) == "rootfs" {
			unix.Unmount(p, unix.MNT_DETACH)
		}
		return nil
	})
}

// makeBusyboxRootfs assembles a minimal rootfs from Debian's busybox-static.
func makeBusyboxRootfs(t *testing.T, dir string) {
	t.Helper()
	bb := "/bin/busybox"
	out, err := exec.Command("file", "-L", bb).CombinedOutput()
	if err == nil && !strings.Contains(string(out), "statically linked") && !strings.Contains(string(out), "static-pie") {
		t.Skipf("%s is not static (install busybox-static): %s", bb, out)
	}
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Skipf("busybox: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"sh", "cat", "echo", "sleep", "head", "dd", "md5sum", "true", "tee", "seq", "ls", "stty"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", app)); err != nil {
			t.Fatal(err)
		}
	}
}

// overlayMounts makes a fresh upper/work pair for id over the busybox base.
func (a *agent) overlayMounts(id string) []*runtimev1.Mount {
	up := filepath.Join(a.dir, id, "fs")
	wk := filepath.Join(a.dir, id, "work")
	for _, d := range []string{up, wk} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			a.t.Fatal(err)
		}
	}
	return []*runtimev1.Mount{{Type: "overlay", Source: "overlay",
		Options: []string{"lowerdir=" + a.base, "upperdir=" + up, "workdir=" + wk}}}
}

func testSpec(id string, args ...string) *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  []string{"CAP_KILL", "CAP_CHOWN"},
				Effective: []string{"CAP_KILL", "CAP_CHOWN"},
				Permitted: []string{"CAP_KILL", "CAP_CHOWN"},
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Hostname: id,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/offload-plugintest/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore"},
			ReadonlyPaths: []string{"/proc/sys"},
		},
	}
}

func specJSON(t *testing.T, s *specs.Spec) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ref(id string) *runtimev1.ProcessRef {
	return &runtimev1.ProcessRef{Namespace: testNS, ContainerId: id}
}

func execRef(id, exec string) *runtimev1.ProcessRef {
	return &runtimev1.ProcessRef{Namespace: testNS, ContainerId: id, ExecId: exec}
}

func (a *agent) create(id string, spec *specs.Spec, stdio *runtimev1.StdioConfig) uint32 {
	a.t.Helper()
	resp, err := a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: id,
		Spec: specJSON(a.t, spec), Rootfs: a.overlayMounts(id), Stdio: stdio})
	if err != nil {
		a.t.Fatalf("create %s: %v", id, err)
	}
	return resp.Pid
}

func (a *agent) startP(r *runtimev1.ProcessRef) uint32 {
	a.t.Helper()
	resp, err := a.client.Start(context.Background(), r)
	if err != nil {
		a.t.Fatalf("start %v: %v", r, err)
	}
	return resp.Pid
}

func (a *agent) wait(r *runtimev1.ProcessRef) uint32 {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := a.client.Wait(ctx, r)
	if err != nil {
		a.t.Fatalf("wait %v: %v", r, err)
	}
	return resp.ExitStatus
}

func (a *agent) del(r *runtimev1.ProcessRef) *runtimev1.DeleteResponse {
	a.t.Helper()
	resp, err := a.client.Delete(context.Background(), &runtimev1.DeleteRequest{Process: r})
	if err != nil {
		a.t.Fatalf("delete %v: %v", r, err)
	}
	return resp
}

// attach opens a stdio-channel connection for one stream.
func (a *agent) attach(r *runtimev1.ProcessRef, s runtimev1.StdioStream) (net.Conn, error) {
	conn, err := net.Dial("unix", a.stdioL)
	if err != nil {
		return nil, err
	}
	if err := runtimev1.WriteStdioFrame(conn, &runtimev1.StdioAttach{Process: r, Stream: s}); err != nil {
		conn.Close()
		return nil, err
	}
	var resp runtimev1.StdioAttachResponse
	if err := runtimev1.ReadStdioFrame(conn, &resp); err != nil {
		conn.Close()
		return nil, err
	}
	if resp.Error != "" {
		conn.Close()
		return nil, errors.New(resp.Error)
	}
	return conn, nil
}

func (a *agent) mustAttach(r *runtimev1.ProcessRef, s runtimev1.StdioStream) net.Conn {
	a.t.Helper()
	c, err := a.attach(r, s)
	if err != nil {
		a.t.Fatalf("attach %v %v: %v", r, s, err)
	}
	a.t.Cleanup(func() { c.Close() })
	return c
}

// readAll collects a stream in the background.
func readAll(c net.Conn) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		ch <- b
	}()
	return ch
}

// eventWatcher subscribes to the agent's event stream.
type eventWatcher struct {
	ch     chan *runtimev1.Event
	cancel func()
}

func (a *agent) watchEvents(afterSeq uint64, ids ...string) *eventWatcher {
	a.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := a.client.Events(ctx, &runtimev1.EventsRequest{Namespace: testNS, ContainerIds: ids, AfterSeq: afterSeq})
	if err != nil {
		a.t.Fatal(err)
	}
	w := &eventWatcher{ch: make(chan *runtimev1.Event, 100), cancel: cancel}
	go func() {
		defer close(w.ch)
		for {
			e, err := st.Recv()
			if err != nil {
				return
			}
			w.ch <- e
		}
	}()
	a.t.Cleanup(cancel)
	return w
}

// next returns the next event, decoded.
func (w *eventWatcher) next(t *testing.T, timeout time.Duration) (*runtimev1.Event, interface{}) {
	t.Helper()
	select {
	case e, ok := <-w.ch:
		if !ok {
			t.Fatal("event stream ended")
		}
		v, err := typeurl.UnmarshalAny(e.Event)
		if err != nil {
			t.Fatal(err)
		}
		return e, v
	case <-time.After(timeout):
		t.Fatal("no event within", timeout)
	}
	return nil, nil
}

func (w *eventWatcher) nextExit(t *testing.T) *eventsapi.TaskExit {
	t.Helper()
	e, v := w.next(t, 30*time.Second)
	ex, ok := v.(*eventsapi.TaskExit)
	if !ok {
		t.Fatalf("event %s %T, want TaskExit", e.Topic, v)
	}
	return ex
}
