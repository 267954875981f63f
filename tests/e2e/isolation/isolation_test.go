//go:build e2e

// Package isolation proves the testbed's DPU side is honest (DESIGN.md §4):
// it cannot see host files under its private directories, host processes,
// or host container cgroups, while its own containerd runs containers with
// stock runc; and `testbed down` leaves nothing behind.
package isolation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

func TestMain(m *testing.M) { testbed.Main(m) }

func unique(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// exitCode runs args on the DPU side and returns its exit code.
func dpuExit(t *testing.T, args ...string) int {
	t.Helper()
	r, err := testbed.DPU(ctx(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	return r.ExitCode
}

func TestHostMarkerFilesInvisible(t *testing.T) {
	name := unique("offload-isolation-marker")
	for _, dir := range []string{"/tmp", "/var/lib"} {
		host := filepath.Join(dir, name)
		if err := os.WriteFile(host, []byte("host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(host) })
		if code := dpuExit(t, "test", "-e", host); code != 1 {
			t.Errorf("DPU side: test -e %s = exit %d, want 1 (invisible)", host, code)
		}
		if ls := testbed.MustDPU(t, "ls", "-a", dir); strings.Contains(ls, name) {
			t.Errorf("DPU side lists %s in %s:\n%s", name, dir, ls)
		}
		// The reverse holds too: the DPU's files stay on the DPU side.
		dpuName := unique("offload-isolation-dpu")
		testbed.MustDPU(t, "sh", "-c", "echo dpu >"+filepath.Join(dir, dpuName))
		if _, err := os.Stat(filepath.Join(dir, dpuName)); !os.IsNotExist(err) {
			t.Errorf("host sees the DPU's %s: %v", filepath.Join(dir, dpuName), err)
		}
		if got := testbed.MustDPU(t, "cat", filepath.Join(dir, dpuName)); got != "dpu\n" {
			t.Errorf("DPU reads back %q", got)
		}
	}
	// Control: a host file outside the private directories is visible, so
	// the checks above can fail.
	wd, _ := os.Getwd()
	if code := dpuExit(t, "test", "-e", filepath.Join(wd, "isolation_test.go")); code != 0 {
		t.Errorf("DPU side cannot see the repository (exit %d); the project's ./bin would be missing", code)
	}
}

func TestHostProcessInvisible(t *testing.T) {
	marker := unique("offload-isolation-sleep")
	cmd := exec.Command("/bin/sh", "-c", "sleep 300; : "+marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	pid := cmd.Process.Pid
	// Start returns once the child is in execve, which may be before the
	// kernel has set up its argument area: poll briefly.
	var hostCmdline []byte
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		hostCmdline, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || strings.Contains(string(hostCmdline), marker) {
			break
		}
	}
	if err != nil || !strings.Contains(string(hostCmdline), marker) {
		t.Fatalf("host /proc/%d/cmdline = %q, %v", pid, hostCmdline, err)
	}
	// The pid either does not exist on the DPU side or is another process.
	r, err := testbed.DPU(ctx(t), "cat", fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode == 0 && strings.Contains(r.Stdout, marker) {
		t.Errorf("DPU /proc/%d is the host process %q", pid, r.Stdout)
	}
	all := testbed.MustDPU(t, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
	if strings.Contains(all, marker) {
		t.Errorf("a DPU /proc entry shows the host process %s", marker)
	}
	// Control: the DPU side sees its own processes, its containerd among them.
	if !strings.Contains(all, "containerd --config "+testbed.DPUContainerdConfig) {
		t.Errorf("DPU /proc lacks its own containerd:\n%s", all)
	}
	if n := strings.TrimSpace(testbed.MustDPU(t, "sh", "-c", "ls -d /proc/[0-9]* | wc -l")); n == "" {
		t.Error("no processes on the DPU side")
	} else if c, _ := strconv.Atoi(n); c > 200 {
		t.Errorf("DPU side sees %d processes; its pid namespace should hold a handful", c)
	}
}

// startHostContainer runs a detached busybox sleep in the host containerd and
// returns its host pid.
func startHostContainer(t *testing.T, id string) int {
	t.Helper()
	testbed.MustHost(t, "ctr", "run", "-d", testbed.BusyboxImage, id, "sleep", "300")
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		testbed.Host(c, "ctr", "tasks", "kill", "-s", "KILL", id)
		testbed.Host(c, "ctr", "tasks", "delete", "-f", id)
		testbed.Host(c, "ctr", "containers", "delete", id)
	})
	return taskPid(t, testbed.MustHost(t, "ctr", "tasks", "ls"), id)
}

// taskPid finds id's pid in `ctr tasks ls` output.
func taskPid(t *testing.T, out, id string) int {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("tasks ls: %q", line)
			}
			return pid
		}
	}
	t.Fatalf("task %s not in:\n%s", id, out)
	return 0
}

func TestHostContainerCgroupsInvisible(t *testing.T) {
	id := unique("hostctr")
	pid := startHostContainer(t, id)

	// Control: the host has the container's cgroup (ctr uses /<namespace>/<id>).
	hostCg := filepath.Join("/sys/fs/cgroup/pids", "default", id)
	procs, err := os.ReadFile(filepath.Join(hostCg, "cgroup.procs"))
	if err != nil || !strings.Contains(string(procs), strconv.Itoa(pid)) {
		t.Fatalf("host cgroup %s: procs %q, %v (want pid %d)", hostCg, procs, err, pid)
	}
	found := testbed.MustDPU(t, "find", "/sys/fs/cgroup", "-name", id)
	if strings.Contains(found, id) {
		t.Errorf("DPU cgroupfs shows the host container's cgroup:\n%s", found)
	}
	// The DPU's cgroup root is the testbed's offload-dpu cgroup, not the host's root.
	cg := testbed.MustDPU(t, "cat", "/proc/self/cgroup")
	for _, line := range strings.Split(strings.TrimSpace(cg), "\n") {
		if !strings.HasSuffix(line, ":/") {
			t.Errorf("DPU shell's cgroup %q, want the namespace root /", line)
		}
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/pids", testbed.DPUCgroup)); err != nil {
		t.Errorf("host lacks the DPU cgroup: %v", err)
	}
	// And the container's pid does not show on the DPU side.
	if r, _ := testbed.DPU(ctx(t), "cat", fmt.Sprintf("/proc/%d/cmdline", pid)); r.ExitCode == 0 && strings.Contains(r.Stdout, "sleep") {
		t.Errorf("DPU /proc/%d is the host container's process: %q", pid, r.Stdout)
	}
}

func TestDPUContainerdRunsBusyboxWithRunc(t *testing.T) {
	id := unique("dpuctr")
	out := testbed.MustDPU(t, "ctr", "run", "--rm", testbed.BusyboxImage, id, "sh", "-c", "echo hello from busybox; id -u; id -u user")
	if want := "hello from busybox\n0\n1000\n"; out != want {
		t.Errorf("container output %q, want %q", out, want)
	}

	// A detached container: it runs inside the DPU side (its cgroup is under
	// the host's offload-dpu cgroup, its runtime is stock runc) and the host
	// containerd knows nothing of it.
	testbed.MustDPU(t, "ctr", "run", "-d", testbed.BusyboxImage, id, "sleep", "300")
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		testbed.DPU(c, "ctr", "tasks", "kill", "-s", "KILL", id)
		testbed.DPU(c, "ctr", "tasks", "delete", "-f", id)
		testbed.DPU(c, "ctr", "containers", "delete", id)
	})
	info := testbed.MustDPU(t, "ctr", "containers", "info", id)
	if !strings.Contains(info, `"io.containerd.runc.v2"`) {
		t.Errorf("container runtime is not io.containerd.runc.v2:\n%s", info)
	}
	dpuPid := taskPid(t, testbed.MustDPU(t, "ctr", "tasks", "ls"), id)
	if !strings.Contains(testbed.MustDPU(t, "cat", fmt.Sprintf("/proc/%d/cmdline", dpuPid)), "sleep") {
		t.Errorf("DPU pid %d is not the container's sleep", dpuPid)
	}
	hostCg := filepath.Join("/sys/fs/cgroup/pids", testbed.DPUCgroup, "default", id, "cgroup.procs")
	procs, err := os.ReadFile(hostCg)
	if err != nil || strings.TrimSpace(string(procs)) == "" {
		t.Fatalf("container cgroup %s on the host: %q, %v", hostCg, procs, err)
	}
	hostPid := strings.Fields(string(procs))[0]
	if status, err := os.ReadFile("/proc/" + hostPid + "/status"); err != nil || !strings.Contains(string(status), "NSpid:\t"+hostPid+"\t") {
		t.Errorf("host pid %s status: %v", hostPid, err)
	} else if !strings.Contains(string(status), "\t"+strconv.Itoa(dpuPid)+"\t1\n") {
		// NSpid: host pid, DPU pid, container pid (1).
		t.Errorf("host pid %s is not DPU pid %d: %s", hostPid, dpuPid, status)
	}
	if l := testbed.MustHost(t, "ctr", "containers", "ls", "-q"); strings.Contains(l, id) {
		t.Errorf("host containerd lists the DPU's container %s", id)
	}
	// The DPU's snapshots live in the DPU side's own /var/lib.
	if code := dpuExit(t, "sh", "-c", "ls "+testbed.SnapshotsDir+"/snapshots | grep -q ."); code != 0 {
		t.Errorf("no snapshots under %s on the DPU side", testbed.SnapshotsDir)
	}
}

func TestDPUNetwork(t *testing.T) {
	addr := testbed.MustDPU(t, "ip", "-o", "-4", "addr", "show")
	if !strings.Contains(addr, testbed.DPUIP+"/24") || strings.Contains(addr, testbed.HostIP) {
		t.Errorf("DPU addresses:\n%s", addr)
	}
	if route := testbed.MustDPU(t, "ip", "route"); strings.Contains(route, "default") {
		t.Errorf("DPU has a default route:\n%s", route)
	}
	testbed.MustDPU(t, "busybox", "ping", "-c", "1", "-W", "5", testbed.HostIP)
	testbed.MustHost(t, "busybox", "ping", "-c", "1", "-W", "5", testbed.DPUIP)
	if hostAddr := testbed.MustHost(t, "ip", "-o", "-4", "addr", "show"); !strings.Contains(hostAddr, testbed.HostIP+"/24") {
		t.Errorf("host side addresses:\n%s", hostAddr)
	}
}

// Cancelling a DPU command's context kills the process on the DPU side too,
// not just the local nsenter.
func TestDPUCommandCancelKillsDPUProcess(t *testing.T) {
	// Both the shell and its sleep child carry a marker in their arguments.
	marker := fmt.Sprintf("300.%d", time.Now().UnixNano()%1000000000)
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := testbed.DPU(c, "sh", "-c", "sleep "+marker+"; : "+marker)
	if err == nil {
		t.Fatalf("DPU command outlived its context: %+v", r)
	}
	var left string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		left = testbed.MustDPU(t, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
		if !strings.Contains(left, marker) {
			return
		}
	}
	t.Errorf("DPU process %s still runs after its context ended", marker)
}

// A second up keeps what runs: same DPU side, same containerds, same images.
func TestUpIsIdempotent(t *testing.T) {
	before, err := testbed.DPUInitPid()
	if err != nil {
		t.Fatal(err)
	}
	dpuContainerd := testbed.MustDPU(t, "cat", "/run/offload-dpu/containerd.pid")
	hostContainerd, err := os.ReadFile(filepath.Join(testbed.RunDir, "pids", "host-containerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if err := testbed.Up(ctx(t)); err != nil {
		t.Fatal(err)
	}
	after, err := testbed.DPUInitPid()
	if err != nil || after != before {
		t.Errorf("DPU side pid 1 changed from %d to %d (%v)", before, after, err)
	}
	if got := testbed.MustDPU(t, "cat", "/run/offload-dpu/containerd.pid"); got != dpuContainerd {
		t.Errorf("DPU containerd restarted: pid %q -> %q", dpuContainerd, got)
	}
	if got, _ := os.ReadFile(filepath.Join(testbed.RunDir, "pids", "host-containerd.pid")); string(got) != string(hostContainerd) {
		t.Errorf("host containerd restarted: %q -> %q", hostContainerd, got)
	}
	_, up, err := testbed.Status(ctx(t))
	if err != nil || !up {
		t.Errorf("status after up: up=%v, %v", up, err)
	}
}
