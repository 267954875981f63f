//go:build e2e

// Package runtime is the end-to-end suite of io.containerd.offload.v1: the
// DPU side's containerd runs containers through containerd-shim-offload-v1,
// which runs them on the host through offload-agent. Every scenario also runs
// with the stock io.containerd.runc.v2 runtime on the host side's reference
// containerd, and both must behave the same.
package runtime

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// rt is a runtime under test: which side's ctr runs it and with which flags,
// and where its host-side traces (bundles, runc state) live.
type rt struct {
	name string
	// side runs a command on the side whose containerd this runtime uses.
	side func(ctx context.Context, args ...string) *exec.Cmd
	// runFlags select the runtime in `ctr run`.
	runFlags []string
	// hostDirs are host directories that hold per-container state named by
	// the container ID (namespace "default").
	hostDirs []string
	// offload is true for the runtime under test (the DPU's pids are not
	// the host's).
	offload bool
}

var (
	offloadRT = rt{
		name:     "offload",
		side:     testbed.DPUCommand,
		runFlags: []string{"--runtime", "io.containerd.offload.v1"},
		hostDirs: []string{testbed.RunDir + "/agent/bundles/default", testbed.RunDir + "/agent/runc/default"},
		offload:  true,
	}
	referenceRT = rt{
		name:     "runc",
		side:     testbed.HostCommand,
		runFlags: []string{"--runtime", "io.containerd.runc.v2"},
		hostDirs: []string{testbed.RunDir + "/containerd/io.containerd.runtime.v2.task/default"},
	}
	runtimes = []rt{offloadRT, referenceRT}
)

var idSeq atomic.Int64

// newID returns a container ID unique to this run, and registers it for
// the leftover check.
func newID(t *testing.T, r rt, what string) string {
	id := fmt.Sprintf("e2e-%s-%s-%d-%d", r.name, what, os.Getpid(), idSeq.Add(1))
	usedIDs[r.name] = append(usedIDs[r.name], id)
	return id
}

var usedIDs = map[string][]string{}

type result struct {
	stdout, stderr string
	code           int
}

// ctr runs ctr on r's side, bounded by d.
func (r rt) ctr(t *testing.T, d time.Duration, stdin []byte, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := r.side(ctx, append([]string{"ctr"}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	res := result{stdout: so.String(), stderr: se.String()}
	if ctx.Err() != nil {
		t.Fatalf("%s: ctr %q timed out after %s\nstdout: %s\nstderr: %s", r.name, args, d, res.stdout, res.stderr)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: ctr %q: %v", r.name, args, err)
	}
	return res
}

// mustCtr runs ctr and fails the test unless it exits 0.
func (r rt) mustCtr(t *testing.T, args ...string) string {
	t.Helper()
	res := r.ctr(t, 2*time.Minute, nil, args...)
	if res.code != 0 {
		t.Fatalf("%s: ctr %q exited %d\nstdout: %s\nstderr: %s", r.name, args, res.code, res.stdout, res.stderr)
	}
	return res.stdout
}

// run is `ctr run --rm <runtime> IMAGE id args...`.
func (r rt) run(t *testing.T, id string, flags []string, args ...string) result {
	t.Helper()
	a := append([]string{"run", "--rm"}, r.runFlags...)
	a = append(a, flags...)
	a = append(a, testbed.BusyboxImage, id)
	return r.ctr(t, 3*time.Minute, nil, append(a, args...)...)
}

// detach starts `sleep 100000` (or args) detached and registers its removal.
func (r rt) detach(t *testing.T, id string, flags []string, args ...string) {
	t.Helper()
	if len(args) == 0 {
		args = []string{"sleep", "100000"}
	}
	a := append([]string{"run", "-d"}, r.runFlags...)
	a = append(a, flags...)
	r.mustCtr(t, append(append(a, testbed.BusyboxImage, id), args...)...)
	t.Cleanup(func() { r.remove(t, id) })
}

// remove kills and deletes a container, ignoring "not found".
func (r rt) remove(t *testing.T, id string) {
	r.ctr(t, time.Minute, nil, "task", "kill", "-s", "SIGKILL", id)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st := r.taskStatus(t, id); st == "" || st == "STOPPED" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.ctr(t, time.Minute, nil, "task", "delete", id)
	r.ctr(t, time.Minute, nil, "container", "delete", id)
}

// taskPid returns the pid `ctr task ls` reports for id.
func (r rt) taskPid(t *testing.T, id string) int {
	t.Helper()
	for _, line := range strings.Split(r.mustCtr(t, "task", "ls"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("task ls: %q", line)
			}
			return pid
		}
	}
	t.Fatalf("%s: task %s not listed", r.name, id)
	return 0
}

// taskStatus returns the status `ctr task ls` reports for id ("" if none).
func (r rt) taskStatus(t *testing.T, id string) string {
	res := r.ctr(t, time.Minute, nil, "task", "ls")
	for _, line := range strings.Split(res.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// waitStatus waits until the task has the status.
func (r rt) waitStatus(t *testing.T, id, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r.taskStatus(t, id) == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: task %s never became %s (is %q)", r.name, id, want, r.taskStatus(t, id))
}

// hostCmdline reads a host process's argv.
func hostCmdline(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	return strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ")
}

// forEachRuntime runs f as a subtest per runtime.
func forEachRuntime(t *testing.T, f func(t *testing.T, r rt)) {
	for _, r := range runtimes {
		t.Run(r.name, func(t *testing.T) { f(t, r) })
	}
}
