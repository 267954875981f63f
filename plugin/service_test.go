package plugin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cgroupsv1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

func TestExitCodes(t *testing.T) {
	a := newAgent(t)
	ev := a.watchEvents(0)
	cases := []struct {
		id     string
		args   []string
		signal unix.Signal
		want   uint32
	}{
		{"exit0", []string{"true"}, 0, 0},
		{"exit7", []string{"sh", "-c", "exit 7"}, 0, 7},
		{"sigterm", []string{"sleep", "1000"}, unix.SIGTERM, 143},
		{"sigkill", []string{"sleep", "1000"}, unix.SIGKILL, 137},
	}
	for _, tc := range cases {
		spec := testSpec(tc.id, tc.args...)
		if tc.signal == unix.SIGTERM {
			// An init of a pid namespace only gets signals it handles (bar
			// SIGKILL); share the host's pid namespace so SIGTERM kills.
			spec.Linux.Namespaces = spec.Linux.Namespaces[1:]
		}
		pid := a.create(tc.id, spec, nil)
		if pid == 0 {
			t.Fatalf("%s: create returned pid 0", tc.id)
		}
		if st, err := a.client.State(context.Background(), ref(tc.id)); err != nil || st.Status != runtimev1.Status_CREATED {
			t.Fatalf("%s: state after create = %v, %v", tc.id, st, err)
		}
		if got := a.startP(ref(tc.id)); got != pid {
			t.Fatalf("%s: start pid %d, create pid %d", tc.id, got, pid)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil && tc.signal != 0 {
			t.Fatalf("%s: host pid %d not in /proc: %v", tc.id, pid, err)
		}
		if tc.signal != 0 {
			if _, err := a.client.Kill(context.Background(), &runtimev1.KillRequest{Process: ref(tc.id), Signal: uint32(tc.signal)}); err != nil {
				t.Fatalf("%s: kill: %v", tc.id, err)
			}
		}
		if got := a.wait(ref(tc.id)); got != tc.want {
			t.Errorf("%s: wait status %d, want %d", tc.id, got, tc.want)
		}
		ex := ev.nextExit(t)
		if ex.ContainerID != tc.id || ex.ID != tc.id || ex.ExitStatus != tc.want || ex.Pid != pid {
			t.Errorf("%s: TaskExit %+v, want status %d pid %d", tc.id, ex, tc.want, pid)
		}
		st, err := a.client.State(context.Background(), ref(tc.id))
		if err != nil || st.Status != runtimev1.Status_STOPPED || st.ExitStatus != tc.want {
			t.Errorf("%s: state after exit = %v, %v", tc.id, st, err)
		}
		if _, err := a.client.Kill(context.Background(), &runtimev1.KillRequest{Process: ref(tc.id), Signal: 9}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			t.Errorf("%s: kill after exit: %v, want NotFound", tc.id, err)
		}
		d := a.del(ref(tc.id))
		if d.ExitStatus != tc.want || d.Pid != pid {
			t.Errorf("%s: delete response %+v", tc.id, d)
		}
	}
}

func TestStdoutChecksumAndBackpressure(t *testing.T) {
	a := newAgent(t)
	const size = 6 << 20
	data := make([]byte, size)
	rand.Read(data)
	id := "bigout"
	mounts := a.overlayMounts(id)
	// Put the payload in the container's upper dir.
	if err := os.WriteFile(filepath.Join(a.dir, id, "fs", "payload"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := testSpec(id, "sh", "-c", "cat /payload; echo done >&2")
	if _, err := a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: id,
		Spec: specJSON(t, spec), Rootfs: mounts, Stdio: &runtimev1.StdioConfig{Stdout: true, Stderr: true}}); err != nil {
		t.Fatal(err)
	}
	ev := a.watchEvents(0, id)
	errConn := a.mustAttach(ref(id), runtimev1.StdioStream_STDERR)
	a.startP(ref(id))
	// Nobody reads stdout yet: the container must block, not lose data.
	time.Sleep(700 * time.Millisecond)
	if st, _ := a.client.State(context.Background(), ref(id)); st.Status != runtimev1.Status_RUNNING {
		t.Fatalf("container should block on a full pipe, status %v", st.Status)
	}
	outConn := a.mustAttach(ref(id), runtimev1.StdioStream_STDOUT)
	if _, err := a.attach(ref(id), runtimev1.StdioStream_STDOUT); err == nil {
		t.Fatal("second attach to the same stream succeeded")
	}
	out := readAll(outConn)
	errOut := readAll(errConn)
	ex := ev.nextExit(t)
	if ex.ExitStatus != 0 {
		t.Fatalf("exit %d", ex.ExitStatus)
	}
	// The exit was published after stdout reached EOF: the stream is
	// complete right away.
	var got []byte
	select {
	case got = <-out:
	case <-time.After(2 * time.Second):
		t.Fatal("stdout not complete when TaskExit was published")
	}
	if len(got) != size || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("stdout: %d bytes, checksum mismatch=%v", len(got), sha256.Sum256(got) != sha256.Sum256(data))
	}
	if e := <-errOut; string(e) != "done\n" {
		t.Fatalf("stderr %q", e)
	}
	a.del(ref(id))
}

// TestExitNotHeldByUnreadStdout: a stdout stream whose DPU side stopped
// reading (a detached container after ctr went away) must not hold the
// exit back for drain_timeout, and no byte the process wrote is dropped:
// the stream still delivers everything, after the exit, once read.
func TestExitNotHeldByUnreadStdout(t *testing.T) {
	a := newAgent(t) // drain_timeout 5s
	const size = 8 << 20
	data := make([]byte, size)
	rand.Read(data)
	id := "unread"
	mounts := a.overlayMounts(id)
	if err := os.WriteFile(filepath.Join(a.dir, id, "fs", "payload"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := testSpec(id, "sh", "-c", "cat /payload; sleep 100")
	if _, err := a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: id,
		Spec: specJSON(t, spec), Rootfs: mounts, Stdio: &runtimev1.StdioConfig{Stdout: true}}); err != nil {
		t.Fatal(err)
	}
	ev := a.watchEvents(0, id)
	outConn := a.mustAttach(ref(id), runtimev1.StdioStream_STDOUT)
	a.startP(ref(id))
	// Nobody reads: the pipe and the connection fill and cat blocks.
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	if _, err := a.client.Kill(context.Background(), &runtimev1.KillRequest{Process: ref(id), Signal: 9}); err != nil {
		t.Fatal(err)
	}
	ex := ev.nextExit(t)
	took := time.Since(killed)
	if ex.ExitStatus != 137 {
		t.Fatalf("exit %d", ex.ExitStatus)
	}
	if took > 3*time.Second {
		t.Errorf("exit published %s after the kill; an unread stream must not hold it for drain_timeout", took.Round(time.Millisecond))
	}
	// Everything cat wrote before it was killed still arrives, in order.
	var got []byte
	select {
	case got = <-readAll(outConn):
	case <-time.After(20 * time.Second):
		t.Fatal("stdout did not reach EOF after the exit")
	}
	if len(got) == 0 || len(got) > size || sha256.Sum256(got) != sha256.Sum256(data[:len(got)]) {
		t.Fatalf("stdout: %d bytes, not a prefix of the payload", len(got))
	}
	a.del(ref(id))
}

func TestStdinEOF(t *testing.T) {
	a := newAgent(t)
	id := "stdin"
	a.create(id, testSpec(id, "sh", "-c", "cat; echo after-eof"), &runtimev1.StdioConfig{Stdin: true, Stdout: true})
	in := a.mustAttach(ref(id), runtimev1.StdioStream_STDIN)
	out := readAll(a.mustAttach(ref(id), runtimev1.StdioStream_STDOUT))
	a.startP(ref(id))
	if _, err := io.WriteString(in, "hello\n"); err != nil {
		t.Fatal(err)
	}
	in.(interface{ CloseWrite() error }).CloseWrite()
	if got := a.wait(ref(id)); got != 0 {
		t.Fatalf("exit %d", got)
	}
	if got := string(<-out); got != "hello\nafter-eof\n" {
		t.Fatalf("stdout %q", got)
	}
	a.del(ref(id))
}

func TestCloseIOWithoutStream(t *testing.T) {
	a := newAgent(t)
	id := "closeio"
	a.create(id, testSpec(id, "cat"), &runtimev1.StdioConfig{Stdin: true})
	a.startP(ref(id))
	if _, err := a.client.CloseIO(context.Background(), &runtimev1.CloseIORequest{Process: ref(id), Stdin: true}); err != nil {
		t.Fatal(err)
	}
	if got := a.wait(ref(id)); got != 0 {
		t.Fatalf("exit %d", got)
	}
	a.del(ref(id))
}

func TestExecAndEventOrder(t *testing.T) {
	a := newAgent(t)
	id := "execs"
	ev := a.watchEvents(0, id)
	initPid := a.create(id, testSpec(id, "sleep", "1000"), nil)
	a.startP(ref(id))

	short := execSpec(t, "sh", "-c", "echo exec-out; exit 3")
	if _, err := a.client.Exec(context.Background(), &runtimev1.ExecRequest{Process: execRef(id, "short"), Spec: short,
		Stdio: &runtimev1.StdioConfig{Stdout: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.Exec(context.Background(), &runtimev1.ExecRequest{Process: execRef(id, "short"), Spec: short}); !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		t.Fatalf("duplicate exec: %v", err)
	}
	out := readAll(a.mustAttach(execRef(id, "short"), runtimev1.StdioStream_STDOUT))
	a.startP(execRef(id, "short"))
	if got := a.wait(execRef(id, "short")); got != 3 {
		t.Fatalf("exec exit %d", got)
	}
	if got := string(<-out); got != "exec-out\n" {
		t.Fatalf("exec stdout %q", got)
	}
	if ex := ev.nextExit(t); ex.ID != "short" || ex.ExitStatus != 3 {
		t.Fatalf("exec TaskExit %+v", ex)
	}
	a.del(execRef(id, "short"))

	// A long exec outlives nothing: when the init dies the exec dies with
	// it, and its TaskExit must come before the init's.
	if _, err := a.client.Exec(context.Background(), &runtimev1.ExecRequest{Process: execRef(id, "long"),
		Spec: execSpec(t, "sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	execPid := a.startP(execRef(id, "long"))
	pids, err := a.client.Pids(context.Background(), ref(id))
	if err != nil {
		t.Fatal(err)
	}
	var sawInit, sawExec bool
	for _, p := range pids.Processes {
		sawInit = sawInit || p.Pid == initPid
		sawExec = sawExec || (p.Pid == execPid && p.ExecId == "long")
	}
	if !sawInit || !sawExec {
		t.Fatalf("pids %v: init %d seen %v, exec %d seen %v", pids.Processes, initPid, sawInit, execPid, sawExec)
	}
	if _, err := a.client.Kill(context.Background(), &runtimev1.KillRequest{Process: ref(id), Signal: 9}); err != nil {
		t.Fatal(err)
	}
	first, second := ev.nextExit(t), ev.nextExit(t)
	if first.ID != "long" || first.ExitStatus != 137 || second.ID != id || second.ExitStatus != 137 {
		t.Fatalf("exit order: %+v then %+v; want exec 'long' then init", first, second)
	}
	a.del(ref(id))
}

func execSpec(t *testing.T, args ...string) []byte {
	p := testSpec("x", args...).Process
	return mustJSON(t, p)
}

func mustJSON(t *testing.T, v interface{}) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPauseResumeStats(t *testing.T) {
	a := newAgent(t)
	id := "pause"
	a.create(id, testSpec(id, "sleep", "1000"), nil)
	a.startP(ref(id))
	ctx := context.Background()
	if _, err := a.client.Pause(ctx, ref(id)); err != nil {
		t.Fatal(err)
	}
	if st, _ := a.client.State(ctx, ref(id)); st.Status != runtimev1.Status_PAUSED {
		t.Fatalf("status after pause %v", st.Status)
	}
	freezer := "/sys/fs/cgroup/freezer/offload-plugintest/" + id + "/freezer.state"
	if b, err := os.ReadFile(freezer); err != nil || strings.TrimSpace(string(b)) != "FROZEN" {
		t.Fatalf("freezer.state after pause: %q %v", b, err)
	}
	if _, err := a.client.Resume(ctx, ref(id)); err != nil {
		t.Fatal(err)
	}
	if st, _ := a.client.State(ctx, ref(id)); st.Status != runtimev1.Status_RUNNING {
		t.Fatalf("status after resume %v", st.Status)
	}
	if b, err := os.ReadFile(freezer); err != nil || strings.TrimSpace(string(b)) != "THAWED" {
		t.Fatalf("freezer.state after resume: %q %v", b, err)
	}
	limit := int64(64 << 20)
	res, _ := json.Marshal(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})
	if _, err := a.client.Update(ctx, &runtimev1.UpdateRequest{Process: ref(id), Resources: &anypb.Any{
		TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: res}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile("/sys/fs/cgroup/memory/offload-plugintest/" + id + "/memory.limit_in_bytes"); strings.TrimSpace(string(b)) != strconv.Itoa(64<<20) {
		t.Fatalf("memory limit after update: %q", b)
	}
	resp, err := a.client.Stats(ctx, ref(id))
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(resp.Stats)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := v.(*cgroupsv1.Metrics)
	if !ok {
		t.Fatalf("stats are %T, want cgroup1 Metrics", v)
	}
	if m.Pids == nil || m.Pids.Current < 1 || m.Memory == nil || m.Memory.Usage == nil || m.Memory.Usage.Usage == 0 {
		t.Fatalf("stats lack pids/memory: %+v", m)
	}
	if _, err := a.client.Delete(ctx, &runtimev1.DeleteRequest{Process: ref(id)}); !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Fatalf("delete of a running container: %v, want FailedPrecondition", err)
	}
	if _, err := a.client.Delete(ctx, &runtimev1.DeleteRequest{Process: ref(id), Force: true}); err != nil {
		t.Fatal(err)
	}
}

func TestOOMBeforeExit(t *testing.T) {
	a := newAgent(t)
	id := "oom"
	spec := testSpec(id, "sh", "-c", "a=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; while true; do a=$a$a; done")
	limit := int64(16 << 20)
	swap := limit
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit, Swap: &swap}}
	ev := a.watchEvents(0, id)
	a.create(id, spec, nil)
	a.startP(ref(id))
	e, v := ev.next(t, 30*time.Second)
	if _, ok := v.(*eventsapi.TaskOOM); !ok || e.Topic != TopicTaskOOM {
		t.Fatalf("first event %s %T, want TaskOOM", e.Topic, v)
	}
	ex := ev.nextExit(t)
	if ex.ExitStatus != 137 {
		t.Fatalf("exit %d, want 137", ex.ExitStatus)
	}
	a.del(ref(id))
}

func TestDeleteLeavesNothing(t *testing.T) {
	a := newAgent(t)
	id := "cleanup"
	pid := a.create(id, testSpec(id, "sleep", "1000"), &runtimev1.StdioConfig{Stdout: true})
	a.startP(ref(id))
	bundle := filepath.Join(a.cfg.BundleDir, testNS, id)
	cg := "/sys/fs/cgroup/memory/offload-plugintest/" + id
	for _, p := range []string{bundle + "/config.json", cg, a.svc.stateFile(testNS, id)} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("while running: %v", err)
		}
	}
	if !isMountPoint(bundle + "/rootfs") {
		t.Fatal("rootfs is not mounted while running")
	}
	if _, err := a.client.Kill(context.Background(), &runtimev1.KillRequest{Process: ref(id), Signal: 9}); err != nil {
		t.Fatal(err)
	}
	a.wait(ref(id))
	a.del(ref(id))
	if isMountPoint(bundle + "/rootfs") {
		t.Error("rootfs still mounted")
	}
	for _, p := range []string{bundle, cg, a.svc.stateFile(testNS, id), filepath.Join(a.cfg.RuncRoot, testNS, id)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after delete (%v)", p, err)
		}
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !os.IsNotExist(err) {
		t.Errorf("process %d left after delete", pid)
	}
	if _, err := a.client.State(context.Background(), ref(id)); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("state after delete: %v", err)
	}
}

func TestOOMScoreAdjClamped(t *testing.T) {
	a := newAgent(t)
	id := "oomadj"
	spec := testSpec(id, "sleep", "1000")
	adj := -998
	spec.Process.OOMScoreAdj = &adj
	pid := a.create(id, spec, nil)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if hasCapSysResource() {
		if got != -998 {
			t.Fatalf("oom_score_adj %d, want -998 (agent has CAP_SYS_RESOURCE)", got)
		}
	} else if got != readOOMScoreAdj() {
		t.Fatalf("oom_score_adj %d, want clamped to %d", got, readOOMScoreAdj())
	}
	a.del(ref(id))
}

func TestRootfsPolicy(t *testing.T) {
	a := newAgent(t)
	outside := t.TempDir()
	os.Symlink(outside, filepath.Join(a.dir, "escape"))
	spec := specJSON(t, testSpec("x", "true"))
	cases := []struct {
		name   string
		mounts []*runtimev1.Mount
		want   func(error) bool
	}{
		{"bind outside", []*runtimev1.Mount{{Type: "bind", Source: outside, Options: []string{"rbind"}}}, errdefs.IsPermissionDenied},
		{"symlink escape", []*runtimev1.Mount{{Type: "bind", Source: filepath.Join(a.dir, "escape"), Options: []string{"rbind"}}}, errdefs.IsPermissionDenied},
		{"dotdot", []*runtimev1.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + a.dir + "/../..", "upperdir=" + a.dir, "workdir=" + a.dir}}}, errdefs.IsPermissionDenied},
		{"upper outside", []*runtimev1.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + a.base, "upperdir=" + outside, "workdir=" + a.dir}}}, errdefs.IsPermissionDenied},
		{"loop option", []*runtimev1.Mount{{Type: "bind", Source: a.base, Options: []string{"rbind", "loop"}}}, errdefs.IsInvalidArgument},
		{"ext4 device", []*runtimev1.Mount{{Type: "ext4", Source: "/dev/vda"}}, errdefs.IsInvalidArgument},
		{"no rootfs, relative root", nil, errdefs.IsInvalidArgument},
	}
	for _, tc := range cases {
		_, err := a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: "policy",
			Spec: spec, Rootfs: tc.mounts})
		if !tc.want(errgrpc.ToNative(err)) {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(a.cfg.BundleDir, testNS)); len(ents) != 0 {
		t.Errorf("refused creates left bundles: %v", ents)
	}
	// No mounts: an absolute root.path is bind-mounted, if allowed.
	rs := testSpec("rootpath", "true")
	rs.Root.Path = outside
	if _, err := a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: "rootpath",
		Spec: specJSON(t, rs)}); !errdefs.IsPermissionDenied(errgrpc.ToNative(err)) {
		t.Errorf("root.path outside the prefixes: %v", err)
	}
	rs.Root.Path = a.base
	if _, err := a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: "rootpath",
		Spec: specJSON(t, rs)}); err != nil {
		t.Errorf("root.path under an allowed prefix: %v", err)
	} else {
		a.del(ref("rootpath"))
	}
	// A hook would run a host binary as root.
	hs := testSpec("hook", "true")
	hs.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/true"}}}
	_, err := a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: "hook",
		Spec: specJSON(t, hs), Rootfs: a.overlayMounts("hook")})
	if !errdefs.IsPermissionDenied(errgrpc.ToNative(err)) {
		t.Errorf("hooks: %v", err)
	}
	// A bind mount in the spec from outside the prefixes.
	bs := testSpec("bindspec", "true")
	bs.Mounts = append(bs.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/etc", Options: []string{"rbind"}})
	_, err = a.client.Create(context.Background(), &runtimev1.CreateRequest{Namespace: testNS, ContainerId: "bindspec",
		Spec: specJSON(t, bs), Rootfs: a.overlayMounts("bindspec")})
	if !errdefs.IsPermissionDenied(errgrpc.ToNative(err)) {
		t.Errorf("spec bind mount of /etc: %v", err)
	}
}

func TestListAfterRestart(t *testing.T) {
	a := newAgent(t)
	id := "survivor"
	pid := a.create(id, testSpec(id, "sleep", "1000"), nil)
	a.startP(ref(id))
	a.stop()
	a.start() // a new Service over the same state dir
	l, err := a.client.List(context.Background(), &runtimev1.ListRequest{Namespace: testNS})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Containers) != 1 || l.Containers[0].ContainerId != id || l.Containers[0].Pid != pid ||
		l.Containers[0].Status != runtimev1.Status_RUNNING {
		t.Fatalf("list after restart: %v", l.Containers)
	}
	if _, err := a.client.Kill(context.Background(), &runtimev1.KillRequest{Process: ref(id), Signal: 9}); err != nil {
		t.Fatal(err)
	}
	a.wait(ref(id))
	a.del(ref(id))
}

func TestEventsReplay(t *testing.T) {
	a := newAgent(t)
	for _, id := range []string{"r1", "r2"} {
		a.create(id, testSpec(id, "true"), nil)
		a.startP(ref(id))
		a.wait(ref(id))
	}
	all := a.watchEvents(0)
	e1, _ := all.next(t, 10*time.Second)
	e2, _ := all.next(t, 10*time.Second)
	h, err := a.client.Hello(context.Background(), &runtimev1.HelloRequest{ProtocolVersion: ProtocolVersion})
	if err != nil {
		t.Fatal(err)
	}
	if e2.Seq <= e1.Seq {
		t.Fatalf("sequence not increasing: %d then %d", e1.Seq, e2.Seq)
	}
	after := a.watchEvents(e1.Seq)
	e, v := after.next(t, 10*time.Second)
	if e.Seq != e2.Seq || v.(*eventsapi.TaskExit).ContainerID != "r2" {
		t.Fatalf("replay after %d gave seq %d %v", e1.Seq, e.Seq, v)
	}
	if h.LastSeq != e2.Seq {
		t.Fatalf("Hello last_seq %d, newest event %d", h.LastSeq, e2.Seq)
	}
	filtered := a.watchEvents(0, "r2")
	if _, v := filtered.next(t, 10*time.Second); v.(*eventsapi.TaskExit).ContainerID != "r2" {
		t.Fatalf("filter gave %v", v)
	}
	for _, id := range []string{"r1", "r2"} {
		a.del(ref(id))
	}
}

func TestAttachErrors(t *testing.T) {
	a := newAgent(t)
	if _, err := a.attach(ref("nope"), runtimev1.StdioStream_STDOUT); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("attach to unknown container: %v", err)
	}
	id := "noout"
	a.create(id, testSpec(id, "true"), nil)
	if _, err := a.attach(ref(id), runtimev1.StdioStream_STDOUT); err == nil {
		t.Fatal("attach to a stream that was not configured succeeded")
	}
	a.del(ref(id))
}

func TestTerminalResize(t *testing.T) {
	a := newAgent(t)
	id := "tty"
	spec := testSpec(id, "sh", "-c", "sleep 0.5; stty size; read line; echo got:$line")
	spec.Process.Terminal = true
	a.create(id, spec, &runtimev1.StdioConfig{Terminal: true, Stdin: true, Stdout: true})
	out := readAll(a.mustAttach(ref(id), runtimev1.StdioStream_STDOUT))
	in := a.mustAttach(ref(id), runtimev1.StdioStream_STDIN)
	if _, err := a.attach(ref(id), runtimev1.StdioStream_STDERR); err == nil {
		t.Fatal("a terminal has no separate stderr, attach succeeded")
	}
	a.startP(ref(id))
	if _, err := a.client.ResizePty(context.Background(), &runtimev1.ResizePtyRequest{Process: ref(id), Width: 100, Height: 40}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(in, "hi\n")
	if got := a.wait(ref(id)); got != 0 {
		t.Fatalf("exit %d", got)
	}
	got := strings.ReplaceAll(string(<-out), "\r", "")
	t.Logf("terminal output %q", got)
	if !strings.Contains(got, "40 100\n") || !strings.Contains(got, "got:hi\n") {
		t.Fatalf("terminal output %q", got)
	}
	a.del(ref(id))
}

func TestParallelContainers(t *testing.T) {
	a := newAgent(t)
	const n = 12
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			errs <- func() error {
				ctx := context.Background()
				id := fmt.Sprintf("par%d", i)
				r := ref(id)
				if _, err := a.client.Create(ctx, &runtimev1.CreateRequest{Namespace: testNS, ContainerId: id,
					Spec: specJSON(t, testSpec(id, "sh", "-c", fmt.Sprintf("echo %d; exit %d", i, i))), Rootfs: a.overlayMounts(id),
					Stdio: &runtimev1.StdioConfig{Stdout: true}}); err != nil {
					return fmt.Errorf("create %s: %w", id, err)
				}
				c, err := a.attach(r, runtimev1.StdioStream_STDOUT)
				if err != nil {
					return err
				}
				defer c.Close()
				out := readAll(c)
				if _, err := a.client.Start(ctx, r); err != nil {
					return fmt.Errorf("start %s: %w", id, err)
				}
				w, err := a.client.Wait(ctx, r)
				if err != nil || w.ExitStatus != uint32(i) {
					return fmt.Errorf("wait %s: %v %v", id, w, err)
				}
				if got := string(<-out); got != fmt.Sprintf("%d\n", i) {
					return fmt.Errorf("%s stdout %q", id, got)
				}
				_, err = a.client.Delete(ctx, &runtimev1.DeleteRequest{Process: r})
				return err
			}()
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(a.cfg.BundleDir, testNS)); len(ents) != 0 {
		t.Errorf("bundles left: %d", len(ents))
	}
	if l, _ := a.client.List(context.Background(), &runtimev1.ListRequest{}); len(l.Containers) != 0 {
		t.Errorf("containers left: %v", l.Containers)
	}
}

// TestHostPIDOrphansReaped: without a pid namespace, a process whose parent
// dies is re-parented to the agent; its zombie must not linger.
func TestHostPIDOrphansReaped(t *testing.T) {
	a := newAgent(t)
	id := "orphans"
	spec := testSpec(id, "sh", "-c", "sh -c 'sleep 0.2 & echo $!'; sleep 1000")
	spec.Linux.Namespaces = spec.Linux.Namespaces[1:] // no pid namespace
	a.create(id, spec, &runtimev1.StdioConfig{Stdout: true})
	out := a.mustAttach(ref(id), runtimev1.StdioStream_STDOUT)
	a.startP(ref(id))
	line := make([]byte, 32)
	n, err := out.Read(line)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(line[:n])))
	if err != nil {
		t.Fatalf("orphan pid %q", line[:n])
	}
	// Once its shell parent is gone the orphan belongs to the agent.
	for i := 0; i < 50 && parentOf(pid) != os.Getpid() && parentOf(pid) != -1; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if ppid := parentOf(pid); ppid != os.Getpid() && ppid != -1 {
		t.Fatalf("orphan %d has parent %d, want the agent %d", pid, ppid, os.Getpid())
	}
	deadline := time.Now().Add(3*orphanSweep + 2*time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			t.Fatalf("orphan %d still present (zombie=%v), cgroups:\n%s", pid, isZombie(pid), cg)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := a.client.Delete(context.Background(), &runtimev1.DeleteRequest{Process: ref(id), Force: true}); err != nil {
		t.Fatal(err)
	}
}

func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	p, _ := strconv.Atoi(f[1])
	return p
}
