//go:build e2e

// Package runtime measures the host-side cost of the runtime offload: the
// memory of one offload-agent holding N idle containers against the N
// containerd-shim-runc-v2 processes the stock runtime needs for the same
// containers, measured in the same run on the same machine.
//
//	go test -tags e2e -run '^$' -bench IdleMemory -benchtime 1x ./tests/bench/runtime/
package runtime

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
	"github.com/dpu-offload/offload/api/transport"
)

const cacheBin = "/var/cache/dpu-offload/bin"

func containersN() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_CONTAINERS")); err == nil && n > 0 {
		return n
	}
	return 20
}

func BenchmarkIdleMemory(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	n := containersN()
	root, err := os.MkdirTemp("/var/tmp", "bench-runtime-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(root)
	// runc leaves the parents of the containers' cgroups: the agent's
	// /offload-bench and ctr's /bench (its namespace).
	defer func() {
		for _, parent := range []string{"offload-bench", "bench"} {
			dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
			for _, d := range dirs {
				os.Remove(d)
			}
		}
	}()
	snap := filepath.Join(root, "snapshots")
	base := filepath.Join(snap, "base")
	makeRootfs(b, base)

	agentKB := measureAgent(b, root, snap, base, n)
	shimKB, shims := measureRuncShims(b, root, base, n)
	ratio := float64(agentKB) / float64(shimKB)
	b.ReportMetric(float64(agentKB)/1024, "agent-MiB")
	b.ReportMetric(float64(shimKB)/1024, "runc-shims-MiB")
	b.ReportMetric(ratio*100, "agent-%-of-shims")
	fmt.Printf("idle containers: %d\n", n)
	fmt.Printf("offload-agent RSS:                   %8d KiB (1 process)\n", agentKB)
	fmt.Printf("containerd-shim-runc-v2 RSS (sum):   %8d KiB (%d processes, %d KiB each on average)\n", shimKB, shims, shimKB/int64(max(shims, 1)))
	fmt.Printf("ratio agent/shims:                   %8.1f %% (target <= 10 %%)\n", ratio*100)
	if shims != n {
		b.Errorf("found %d runc shims for %d containers", shims, n)
	}
}

// measureAgent starts offload-agent, creates n `sleep 1000` containers with
// stdout and stderr attached (as the DPU shim would hold them), and returns
// the agent's RSS.
func measureAgent(b *testing.B, root, snap, base string, n int) int64 {
	bin := filepath.Join(root, "offload-agent")
	build := exec.Command("go", "build", "-o", bin, "./cmd/offload-agent")
	build.Dir = repoRoot(b)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build offload-agent: %v\n%s", err, out)
	}
	sock := filepath.Join(root, "agent.sock")
	cfg := fmt.Sprintf(`listen = "unix://%s"
log_level = "warn"
[runtime]
state_dir = "%s/state"
bundle_dir = "%s/bundles"
runc_root = "%s/runc"
runc_binary = "%s"
allowed_mount_prefixes = ["%s"]
`, sock, root, root, root, runcBinary(), snap)
	cfgPath := filepath.Join(root, "agent.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	agent := exec.Command(bin, "--config", cfgPath)
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		agent.Process.Signal(os.Interrupt)
		agent.Wait()
	}()
	addr, _ := transport.ParseAddress("unix://" + sock)
	ctx := context.Background()
	var conn net.Conn
	for i := 0; i < 100; i++ {
		if conn, err := transport.Dial(ctx, addr, transport.Security{}, transport.ChannelRuntime); err == nil {
			conn.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := transport.Dial(ctx, addr, transport.Security{}, transport.ChannelRuntime)
	if err != nil {
		b.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	cl := runtimev1.NewAgentClient(tc)
	spec, err := os.ReadFile(filepath.Join(repoRoot(b), "tests/bench/runtime/testdata/sleep.json"))
	if err != nil {
		b.Fatal(err)
	}
	var streams []net.Conn
	defer func() {
		for _, c := range streams {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("idle%d", i)
		up, wk := filepath.Join(snap, id, "fs"), filepath.Join(snap, id, "work")
		os.MkdirAll(up, 0o755)
		os.MkdirAll(wk, 0o755)
		ref := &runtimev1.ProcessRef{Namespace: "bench", ContainerId: id}
		_, err := cl.Create(ctx, &runtimev1.CreateRequest{Namespace: "bench", ContainerId: id,
			Spec:   []byte(strings.ReplaceAll(string(spec), "CONTAINER_ID", id)),
			Rootfs: []*runtimev1.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + base, "upperdir=" + up, "workdir=" + wk}}},
			Stdio:  &runtimev1.StdioConfig{Stdout: true, Stderr: true}})
		if err != nil {
			b.Fatalf("create %s: %v", id, err)
		}
		defer cl.Delete(ctx, &runtimev1.DeleteRequest{Process: ref, Force: true})
		for _, s := range []runtimev1.StdioStream{runtimev1.StdioStream_STDOUT, runtimev1.StdioStream_STDERR} {
			c, err := transport.Dial(ctx, addr, transport.Security{}, transport.ChannelStdio)
			if err != nil {
				b.Fatal(err)
			}
			streams = append(streams, c)
			runtimev1.WriteStdioFrame(c, &runtimev1.StdioAttach{Process: ref, Stream: s})
			var resp runtimev1.StdioAttachResponse
			if err := runtimev1.ReadStdioFrame(c, &resp); err != nil || resp.Error != "" {
				b.Fatalf("attach %s: %v %s", id, err, resp.Error)
			}
		}
		if _, err := cl.Start(ctx, ref); err != nil {
			b.Fatalf("start %s: %v", id, err)
		}
	}
	time.Sleep(2 * time.Second) // let the agent settle
	l, err := cl.List(ctx, &runtimev1.ListRequest{Namespace: "bench"})
	if err != nil || len(l.Containers) != n {
		b.Fatalf("list: %v (%d containers)", err, len(l.Containers))
	}
	for _, c := range l.Containers {
		if c.Status != runtimev1.Status_RUNNING {
			b.Fatalf("%s is %v", c.ContainerId, c.Status)
		}
	}
	return rssKB(b, agent.Process.Pid)
}

// measureRuncShims starts a private containerd v2.4.2 and n `sleep 1000`
// containers with the stock runc shim (ctr run -d --rootfs), and sums the
// shims' RSS.
func measureRuncShims(b *testing.B, root, base string, n int) (int64, int) {
	dir := filepath.Join(root, "containerd")
	addr := filepath.Join(dir, "containerd.sock")
	os.MkdirAll(dir, 0o700)
	cfg := fmt.Sprintf(`version = 3
root = "%s/root"
state = "%s/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "%s"
`, dir, dir, addr)
	cfgPath := filepath.Join(dir, "config.toml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	cd := exec.Command(filepath.Join(cacheBin, "containerd"), "--config", cfgPath)
	cd.Env = append(os.Environ(), "PATH="+cacheBin+":"+os.Getenv("PATH"))
	logf, _ := os.Create(filepath.Join(dir, "containerd.log"))
	cd.Stdout, cd.Stderr = logf, logf
	if err := cd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cd.Process.Signal(os.Interrupt)
		cd.Wait()
		logf.Close()
	}()
	ctr := func(args ...string) error {
		c := exec.Command(filepath.Join(cacheBin, "ctr"), append([]string{"--address", addr, "--namespace", "bench"}, args...)...)
		c.Env = append(os.Environ(), "PATH="+cacheBin+":"+os.Getenv("PATH"))
		out, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr %v: %v: %s", args, err, out)
		}
		return nil
	}
	for i := 0; i < 100; i++ {
		if ctr("version") == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("idle%d", i)
		if err := ctr("run", "-d", "--rootfs", base, id, "/bin/sleep", "1000"); err != nil {
			b.Fatal(err)
		}
		defer func() {
			ctr("task", "kill", "-s", "SIGKILL", id)
			for j := 0; j < 50 && ctr("task", "rm", id) != nil; j++ {
				time.Sleep(100 * time.Millisecond)
			}
			ctr("container", "rm", id)
		}()
	}
	time.Sleep(2 * time.Second)
	var sum int64
	shims := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmd, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if !strings.HasSuffix(args[0], "containerd-shim-runc-v2") || !strings.Contains(string(cmd), addr) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		sum += rssKB(b, pid)
		shims++
	}
	return sum, shims
}

func rssKB(b *testing.B, pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb
		}
	}
	b.Fatalf("no VmRSS for %d", pid)
	return 0
}

func runcBinary() string {
	if _, err := os.Stat(filepath.Join(cacheBin, "runc")); err == nil {
		return filepath.Join(cacheBin, "runc")
	}
	return "runc"
}

func repoRoot(b *testing.B) string {
	d, err := filepath.Abs("../../..")
	if err != nil {
		b.Fatal(err)
	}
	return d
}

func makeRootfs(b *testing.B, dir string) {
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		b.Skip("busybox-static not installed")
	}
	os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755)
	for _, app := range []string{"sh", "sleep", "true"} {
		os.Symlink("busybox", filepath.Join(dir, "bin", app))
	}
}
