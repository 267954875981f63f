//go:build e2e

package isolation

import (
	"context"
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

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
	return len(f) > 0 && f[0] != "Z"
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatalf("stat %s: %v", p, err)
	}
	return st.Ino
}

// TestDownLeavesNothing brings the testbed down with containers running on
// both sides and its pidfiles gone (as after a crash), checks that no
// process, mount, network namespace, veth, cgroup or state directory is left,
// and brings it back up for the tests and packages that follow.
func TestDownLeavesNothing(t *testing.T) {
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if err := testbed.Up(c); err != nil {
			t.Errorf("testbed up after down: %v", err)
		}
	})

	// Processes the testbed runs: DPU pid 1, DPU containerd, host
	// containerd, and a container (with its shim) on each side.
	dpuInit, err := testbed.DPUInitPid()
	if err != nil {
		t.Fatal(err)
	}
	hostID := unique("hostctr")
	hostCtr := startHostContainer(t, hostID)
	dpuID := unique("dpuctr")
	testbed.MustDPU(t, "ctr", "run", "-d", testbed.BusyboxImage, dpuID, "sleep", "300")
	procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/pids", testbed.DPUCgroup, "default", dpuID, "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procs))) == 0 {
		t.Fatalf("DPU container cgroup: %q %v", procs, err)
	}
	dpuCtr, _ := strconv.Atoi(strings.Fields(string(procs))[0])
	hostContainerd := pidFile(t, "host-containerd")
	pids := map[string]int{"DPU pid 1": dpuInit, "host containerd": hostContainerd, "host container": hostCtr, "DPU container": dpuCtr}
	for _, arg := range []string{testbed.HostContainerdAddress} {
		for _, p := range pidsWithArg(arg) {
			pids["host shim "+strconv.Itoa(p)] = p
		}
	}
	for name, p := range pids {
		if !alive(p) {
			t.Fatalf("%s (pid %d) not running before down", name, p)
		}
	}
	dpuNet := inode(t, "/run/netns/"+testbed.DPUNetns)
	hostNet := inode(t, "/run/netns/"+testbed.HostNetns)

	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Hold the up/down lock from down to the end of the checks, so that no
	// other package's Up brings the testbed back meanwhile.
	err = testbed.Locked(c, func() error {
		// Crash: the pidfiles are lost; down must find everything anyway.
		if err := os.RemoveAll(filepath.Join(testbed.RunDir, "pids")); err != nil {
			return err
		}
		if err := testbed.Down(c); err != nil {
			return err
		}
		checkNothingLeft(t, c, pids, dpuNet, hostNet, hostID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func checkNothingLeft(t *testing.T, c context.Context, pids map[string]int, dpuNet, hostNet uint64, hostID string) {
	t.Helper()

	for name, p := range pids {
		if alive(p) {
			t.Errorf("%s (pid %d) still running after down", name, p)
		}
	}
	for _, arg := range []string{testbed.HostContainerdAddress, testbed.DPUContainerdConfig} {
		if left := pidsWithArg(arg); len(left) > 0 {
			t.Errorf("processes with argument %s left: %v", arg, left)
		}
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for _, prefix := range []string{testbed.RunDir, testbed.LibDir, "/run/netns/offload-", "/dev/shm/offload-testbed"} {
			if strings.HasPrefix(f[4], prefix) {
				t.Errorf("mount left: %s", line)
			}
		}
	}
	for _, ns := range []string{testbed.HostNetns, testbed.DPUNetns} {
		if _, err := os.Stat("/run/netns/" + ns); !os.IsNotExist(err) {
			t.Errorf("network namespace %s left (%v)", ns, err)
		}
	}
	// No process holds the old namespaces (they, and their veth ends, are freed).
	for _, nsFile := range globOrNil("/proc/[0-9]*/ns/net") {
		var st syscall.Stat_t
		if syscall.Stat(nsFile, &st) == nil && (st.Ino == dpuNet || st.Ino == hostNet) {
			pid := strings.Split(nsFile, "/")[2]
			cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			status, _ := os.ReadFile("/proc/" + pid + "/status")
			t.Errorf("process %s (%q) still in a testbed network namespace:\n%s", pid, cmdline, status)
		}
	}
	if out, _ := exec.Command("ip", "-o", "link", "show").Output(); strings.Contains(string(out), testbed.HostVeth) || strings.Contains(string(out), testbed.DPUVeth) {
		t.Errorf("veth left in the root namespace:\n%s", out)
	}
	for _, cg := range globOrNil("/sys/fs/cgroup/*/" + testbed.DPUCgroup) {
		t.Errorf("cgroup left: %s", cg)
	}
	for _, cg := range globOrNil("/sys/fs/cgroup/*/default/" + hostID) {
		t.Errorf("host container cgroup left: %s", cg)
	}
	for _, d := range []string{testbed.RunDir, testbed.LibDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("state directory %s left (%v)", d, err)
		}
	}
	status, up, err := testbed.Status(c)
	if err != nil || up {
		t.Errorf("status after down: up=%v err=%v\n%s", up, err, status)
	}
}

func globOrNil(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	return m
}

func pidFile(t *testing.T, name string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testbed.RunDir, "pids", name+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// pidsWithArg returns the pids with arg as one of their arguments.
func pidsWithArg(arg string) []int {
	var pids []int
	for _, f := range globOrNil("/proc/[0-9]*/cmdline") {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				pid, _ := strconv.Atoi(strings.Split(f, "/")[2])
				if pid != os.Getpid() {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids
}
