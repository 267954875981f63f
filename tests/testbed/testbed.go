// Package testbed gives end-to-end tests the testbed of DESIGN.md §4: one
// machine standing in for a DPU and its host. It drives the script
// tests/testbed/testbed (which also serves people at a shell), so tests and
// humans see exactly the same environment.
//
// Host side: the root mount namespace; commands run in network namespace
// offload-host (HostIP) with ctr pointed at a reference containerd that uses
// stock runc (HostContainerdAddress). DPU side: its own mount, pid, cgroup,
// uts and ipc namespaces in network namespace offload-dpu (DPUIP), private
// /run, /var/lib, /var/log, /tmp and /etc/offload, its own /proc and
// cgroupfs, and its own containerd at DPUContainerdAddress. Both sides have
// the project's ./bin and the provisioned tools on PATH, and both test images
// imported.
//
// An e2e package's TestMain calls Main, which brings the testbed up when it is
// not (Up is idempotent and fast when it is) and leaves it up for the next
// package; `tests/testbed/testbed down` (or Down) removes it.
package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Addresses, names and paths of the testbed (keep in sync with the script).
const (
	HostIP    = "192.0.2.1"
	DPUIP     = "192.0.2.2"
	HostNetns = "offload-host"
	DPUNetns  = "offload-dpu"
	HostVeth  = "offload-h0"
	DPUVeth   = "offload-d0"
	// DPUCgroup is the cgroup (in every hierarchy) the DPU side's cgroup
	// namespace is rooted at.
	DPUCgroup = "offload-dpu"

	// RunDir holds pidfiles, logs, the host containerd's state and socket;
	// LibDir the host containerd's root. Down removes both.
	RunDir = "/run/offload-testbed"
	LibDir = "/var/lib/offload-testbed"

	// HostContainerdAddress is the host-side reference containerd (stock runc).
	HostContainerdAddress = "/run/offload-testbed/containerd/containerd.sock"
	// DPUContainerdAddress is the DPU's containerd, as the DPU side sees it.
	DPUContainerdAddress = "/run/containerd/containerd.sock"
	// DPUContainerdConfig is the DPU containerd's config, inside the DPU side.
	DPUContainerdConfig = "/etc/containerd/config.toml"
	// SnapshotsDir is the DPU containerd's overlayfs snapshotter root; the
	// offload runtime mounts a qtfs share of the host's same path there.
	SnapshotsDir = "/var/lib/offload/snapshots"
	// ShimConfig is where containerd-shim-offload-v1 reads its config on the
	// DPU side (/etc/offload is private to the DPU side).
	ShimConfig = "/etc/offload/shim.toml"
	// CertDir holds the mTLS material on the host side.
	CertDir = "/run/offload-testbed/certs"

	BusyboxImage = "localhost/offload/busybox:latest"
	BigImage     = "localhost/offload/big:latest"
)

// Script returns the path of the tests/testbed/testbed script.
func Script() string {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		p := filepath.Join(filepath.Dir(file), "testbed")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	// Built with -trimpath: find the module root from the working directory.
	dir, _ := os.Getwd()
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "tests", "testbed", "testbed")
		}
	}
	return "tests/testbed/testbed"
}

// Result is the outcome of a command run on one side.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// Err returns nil for exit code 0 and otherwise an error with the exit code
// and stderr.
func (r Result) Err() error {
	if r.ExitCode == 0 {
		return nil
	}
	return fmt.Errorf("exit code %d: %s", r.ExitCode, strings.TrimSpace(r.Stderr))
}

// DPUCommand returns a command that runs args on the DPU side. Use it for
// stdin, streaming or background processes; DPU is simpler otherwise. The
// command runs in its own process group, and cancelling ctx kills the whole
// group: nsenter's child on the DPU side with it.
func DPUCommand(ctx context.Context, args ...string) *exec.Cmd {
	return sideCommand(ctx, "dpu", args)
}

// HostCommand returns a command that runs args on the host side, like
// DPUCommand.
func HostCommand(ctx context.Context, args ...string) *exec.Cmd {
	return sideCommand(ctx, "host", args)
}

func sideCommand(ctx context.Context, side string, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, Script(), append([]string{side, "--"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	return cmd
}

// DPU runs args on the DPU side and returns its output and exit code. The
// error is non-nil only when the command could not be run or ctx ended; a
// non-zero exit is reported in Result.ExitCode (see Result.Err).
func DPU(ctx context.Context, args ...string) (Result, error) {
	return run(ctx, DPUCommand(ctx, args...))
}

// Host runs args on the host side, like DPU.
func Host(ctx context.Context, args ...string) (Result, error) {
	return run(ctx, HostCommand(ctx, args...))
}

func run(ctx context.Context, cmd *exec.Cmd) (Result, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		r.ExitCode = -1
		err = fmt.Errorf("%s: %w (%v)", strings.Join(cmd.Args[1:], " "), ctx.Err(), err)
	case errors.As(err, &exit) && exit.Exited():
		r.ExitCode = exit.ExitCode()
		err = nil
	default:
		r.ExitCode = -1
		err = fmt.Errorf("%s: %w", strings.Join(cmd.Args[1:], " "), err)
	}
	return r, err
}

// MustDPU runs args on the DPU side (bounded by a minute unless t has an
// earlier deadline), fails t unless it exits 0, and returns its stdout.
func MustDPU(t testing.TB, args ...string) string {
	t.Helper()
	return must(t, "dpu", DPU, args)
}

// MustHost runs args on the host side like MustDPU.
func MustHost(t testing.TB, args ...string) string {
	t.Helper()
	return must(t, "host", Host, args)
}

func must(t testing.TB, side string, f func(context.Context, ...string) (Result, error), args []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := f(ctx, args...)
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		t.Fatalf("%s: %q: %v\nstdout: %s", side, args, err, r.Stdout)
	}
	return r.Stdout
}

// LockFile serialises testbed up and down between processes (flock).
const LockFile = "/run/lock/offload-testbed.lock"

// lockHeld is set while Locked runs f: the script must not wait for the
// lock this process holds.
var lockHeld atomic.Bool

// Locked runs f while holding the lock that serialises `testbed up` and
// `testbed down`, so that no other process (another test package, a person at
// a shell) brings the testbed up or down meanwhile. Up and Down called from f
// do not wait for the lock. It waits for the lock until ctx ends.
func Locked(ctx context.Context, f func() error) error {
	if err := os.MkdirAll(filepath.Dir(LockFile), 0o755); err != nil {
		return err
	}
	lf, err := os.OpenFile(LockFile, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("testbed lock: %w", err)
	}
	defer lf.Close()
	for {
		err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("testbed lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed lock %s: %w", LockFile, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	lockHeld.Store(true)
	defer lockHeld.Store(false)
	return f()
}

// script runs the testbed script with args and returns its combined output.
func script(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, Script(), args...)
	if lockHeld.Load() {
		cmd.Env = append(os.Environ(), "TESTBED_LOCK_HELD=1")
	}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("testbed %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Up brings the testbed up: network namespaces and veth, the DPU side with
// its containerd, the host containerd, the images. A no-op (well under a
// second) when it is already up.
func Up(ctx context.Context) error {
	_, err := script(ctx, "up")
	return err
}

// Down removes everything Up created, including leftovers of a crashed run.
func Down(ctx context.Context) error {
	_, err := script(ctx, "down")
	return err
}

// Status returns the script's status report and whether the testbed is fully up.
func Status(ctx context.Context) (string, bool, error) {
	cmd := exec.CommandContext(ctx, Script(), "status")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		return string(out), false, nil
	}
	if err != nil {
		return string(out), false, fmt.Errorf("testbed status: %w\n%s", err, out)
	}
	return string(out), true, nil
}

// DPUInitPid returns the host pid of the DPU side's pid 1 (from its pidfile),
// or an error when the DPU side is not running.
func DPUInitPid() (int, error) {
	b, err := os.ReadFile(filepath.Join(RunDir, "pids", "dpu-init.pid"))
	if err != nil {
		return 0, fmt.Errorf("DPU side not up: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, fmt.Errorf("DPU pidfile %q malformed", b)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, fmt.Errorf("DPU pidfile %q: %w", b, err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("DPU side not running: %w", err)
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	if len(fields) < 20 || fields[19] != f[1] {
		return 0, fmt.Errorf("DPU side not running (pid %d was recycled)", pid)
	}
	return pid, nil
}

// Main is the TestMain of e2e packages: it requires root, brings the testbed
// up (bounded to 10 minutes), runs the tests and exits. It leaves the testbed
// up for the next package.
func Main(m *testing.M) { MainWith(m, nil, nil) }

// MainWith is Main for suites that start something of their own (a server
// on the host side, say): setup runs after the testbed is up, and teardown
// after the tests, also when setup failed part-way.
func MainWith(m *testing.M, setup func() error, teardown func()) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "testbed: e2e tests must run as root")
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t0 := time.Now()
	err := Up(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testbed: %v\n", err)
		os.Exit(1)
	}
	if d := time.Since(t0); d > 2*time.Second {
		fmt.Fprintf(os.Stderr, "testbed: up in %.1fs\n", d.Seconds())
	}
	code := 1
	if setup != nil {
		err = setup()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testbed: suite setup: %v\n", err)
	} else {
		code = m.Run()
	}
	if teardown != nil {
		teardown()
	}
	os.Exit(code)
}
