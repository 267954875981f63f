//go:build e2e

// Package agent checks the testbed's offload-agent as a whole from the DPU
// side: rexec through the agent's own listener and offloadctl status.
package agent

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpu-offload/offload/tests/testbed"
)

func TestMain(m *testing.M) { testbed.Main(m) }

func dpu(t *testing.T, d time.Duration, args ...string) testbed.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	res, err := testbed.DPU(ctx, args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return res
}

// The agent's rexec channel answers with the host process's exit code and
// refuses what its allowlist does not name, like a shell would (126).
func TestRexecThroughAgent(t *testing.T) {
	if res := dpu(t, 30*time.Second, "rexec", "--", "/bin/sh", "-c", "exit 3"); res.ExitCode != 3 {
		t.Fatalf("rexec exit 3: got %d (stderr %q)", res.ExitCode, res.Stderr)
	}
	// The command runs on the host: it sees a host-only marker file.
	marker := fmt.Sprintf("/run/offload-testbed/agent-marker-%d", os.Getpid())
	if err := os.WriteFile(marker, []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(marker)
	res := dpu(t, 30*time.Second, "rexec", "--", "/bin/cat", marker)
	if res.ExitCode != 0 || res.Stdout != "host" {
		t.Fatalf("rexec cat of a host file: code %d stdout %q stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	if res := dpu(t, 30*time.Second, "rexec", "--", "/usr/bin/env"); res.ExitCode != 126 {
		t.Fatalf("rexec of a binary the agent does not allow: got %d, want 126 (stderr %q)", res.ExitCode, res.Stderr)
	}
}

// offloadctl status on the DPU reaches the agent over mTLS and lists a
// container started through io.containerd.offload.v1 with its host pid.
func TestOffloadctlStatus(t *testing.T) {
	id := fmt.Sprintf("status-%d", os.Getpid())
	if res := dpu(t, time.Minute, "ctr", "run", "-d", "--runtime", "io.containerd.offload.v1",
		testbed.BusyboxImage, id, "sleep", "1000"); res.ExitCode != 0 {
		t.Fatalf("ctr run: %d %s", res.ExitCode, res.Stderr)
	}
	defer func() {
		dpu(t, 30*time.Second, "ctr", "task", "kill", "-s", "SIGKILL", id)
		for i := 0; i < 50; i++ {
			if dpu(t, 30*time.Second, "ctr", "task", "delete", id).ExitCode == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		dpu(t, 30*time.Second, "ctr", "container", "rm", id)
	}()
	ls := dpu(t, 30*time.Second, "ctr", "task", "ls")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(id) + `\s+(\d+)\s+RUNNING`).FindStringSubmatch(ls.Stdout)
	if m == nil {
		t.Fatalf("task %s not running:\n%s", id, ls.Stdout)
	}
	pid, _ := strconv.Atoi(m[1])

	res := dpu(t, 30*time.Second, "offloadctl", "status")
	if res.ExitCode != 0 {
		t.Fatalf("offloadctl status: %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	row := regexp.MustCompile(`(?m)^\s+default\s+` + regexp.QuoteMeta(id) + `\s+(\d+)\s+running\s`).FindStringSubmatch(res.Stdout)
	if row == nil || row[1] != strconv.Itoa(pid) {
		t.Fatalf("offloadctl status does not list %s with host pid %d:\n%s", id, pid, res.Stdout)
	}
	for _, want := range []string{"agent 0.", "/var/lib/offload/snapshots (qtfs:snapshots)", "dpu.pem: valid until"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("offloadctl status lacks %q:\n%s", want, res.Stdout)
		}
	}
	// That pid is a host process running the container's command.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || strings.ReplaceAll(string(b), "\x00", " ") != "sleep 1000 " {
		t.Fatalf("host pid %d is not the container's sleep: %q %v", pid, b, err)
	}
}

// An agent that cannot be reached makes offloadctl status fail, after it
// printed what it knows locally.
func TestOffloadctlStatusUnreachable(t *testing.T) {
	cfg := fmt.Sprintf("/tmp/shim-unreachable-%d.toml", os.Getpid())
	body := `agent_address = "unix:///run/nothing-listens-here.sock"` + "\n"
	if res := dpu(t, 10*time.Second, "sh", "-c", "cat >"+cfg+" <<'EOF'\n"+body+"EOF"); res.ExitCode != 0 {
		t.Fatal(res.Stderr)
	}
	defer dpu(t, 10*time.Second, "rm", "-f", cfg)
	res := dpu(t, 30*time.Second, "offloadctl", "status", "--config", cfg, "--timeout", "2s")
	if res.ExitCode == 0 || !strings.Contains(res.Stdout, "unreachable") || !strings.Contains(res.Stderr, "unreachable") {
		t.Fatalf("status against no agent: code %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
}
