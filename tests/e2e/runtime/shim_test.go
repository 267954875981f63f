//go:build e2e

package runtime

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

// shimPids returns the DPU-side pids of offload shims serving id.
func shimPids(t *testing.T, id string) []int {
	t.Helper()
	res, err := testbed.DPU(context.Background(), "pgrep", "-f", "containerd-shim-offload-v1 -namespace default -id "+id+" ")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(res.Stdout) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// When the shim process dies, containerd runs `containerd-shim-offload-v1
// delete`, which must remove the container on the host through the agent.
func TestShimKilledDeleteCleansHost(t *testing.T) {
	r := offloadRT
	id := newID(t, r, "shimdead")
	marker := "4242" + strconv.Itoa(os.Getpid())
	r.detach(t, id, nil, "sleep", marker+"1")
	pid := r.taskPid(t, id)
	if hostCmdline(pid) == "" {
		t.Fatalf("host process %d missing", pid)
	}
	shims := shimPids(t, id)
	if len(shims) != 1 {
		t.Fatalf("shim processes for %s: %v", id, shims)
	}
	testbed.MustDPU(t, "kill", "-9", strconv.Itoa(shims[0]))
	deadline := time.Now().Add(30 * time.Second)
	for hostCmdline(pid) != "" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if c := hostCmdline(pid); c != "" {
		t.Fatalf("host process %d (%q) still runs after the shim died", pid, c)
	}
	// containerd has cleaned the task up; the container record goes too.
	r.waitStatus(t, id, "")
	r.mustCtr(t, "container", "delete", id)
	if _, err := os.Stat(fmt.Sprintf("%s/agent/bundles/default/%s", testbed.RunDir, id)); err == nil {
		t.Errorf("host bundle of %s left", id)
	}
}

// Containers of one CRI sandbox share one shim, as with the runc shim.
func TestSandboxGroupSharesShim(t *testing.T) {
	r := offloadRT
	group := []string{"--annotation", fmt.Sprintf("io.kubernetes.cri.sandbox-id=grp%d", os.Getpid())}
	a, b := newID(t, r, "grpa"), newID(t, r, "grpb")
	r.detach(t, a, group)
	r.detach(t, b, group)
	if pa, pb := shimPids(t, a), shimPids(t, b); len(pa) != 1 || len(pb) != 0 {
		t.Fatalf("shims: %s %v, %s %v; want one shim (started for %s) serving both", a, pa, b, pb, a)
	}
	res := r.ctr(t, time.Minute, nil, "task", "exec", "--exec-id", "x", b, "echo", "via the group shim")
	if res.code != 0 || res.stdout != "via the group shim\n" {
		t.Errorf("exec in the second container: %d %q %q", res.code, res.stdout, res.stderr)
	}
}
