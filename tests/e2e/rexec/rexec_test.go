//go:build e2e

package rexec_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
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

func TestExitCodesAcrossTheLink(t *testing.T) {
	ctx := testContext(t, time.Minute)
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"/bin/sh", "-c", "exit 3"}, 3},
		{[]string{"/bin/sh", "-c", "kill -TERM $$"}, 143},
		{[]string{"/usr/bin/env"}, 126}, // not allowlisted
	} {
		r, err := testbed.DPU(ctx, client(append([]string{"--"}, tc.args...)...)...)
		if err != nil {
			t.Fatal(err)
		}
		if r.ExitCode != tc.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.args, r.ExitCode, tc.code, r.Stderr)
		}
	}
	// Environment and cwd are the ones given, on the host.
	r, err := testbed.DPU(ctx, client("--env", "A=b c", "--cwd", bed.shared, "--", "/bin/sh", "-c", `echo "$A|$(pwd)|$(hostname)|$(cat /proc/1/comm)"`)...)
	if err != nil || r.ExitCode != 0 {
		t.Fatal(r, err)
	}
	// PID 1 of the host side is not the DPU side's init.
	dpuInit := strings.TrimSpace(testbed.MustDPU(t, "cat", "/proc/1/comm"))
	hostInit, _ := os.ReadFile("/proc/1/comm")
	want := fmt.Sprintf("b c|%s|", bed.shared)
	if !strings.HasPrefix(r.Stdout, want) || !strings.HasSuffix(strings.TrimSpace(r.Stdout), "|"+strings.TrimSpace(string(hostInit))) {
		t.Errorf("got %q, want prefix %q and host init %q (DPU init is %q)", r.Stdout, want, hostInit, dpuInit)
	}
}

// TestConcurrentExecsAcrossTheLink runs 100 rexec clients at once on the
// DPU side; each must get its own exit code and output back.
func TestConcurrentExecsAcrossTheLink(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	script := fmt.Sprintf(`d=$(mktemp -d); cd "$d"; trap 'rm -rf "$d"' EXIT
for i in $(seq 1 100); do
	( %s -n -- /bin/sh -c "echo out-$i; exit $((i %% 50))" >"o$i"; echo $? >"c$i" ) &
done
wait
for i in $(seq 1 100); do echo "$i $(cat "c$i") $(cat "o$i")"; done`, strings.Join(client(), " "))
	r, err := testbed.DPU(ctx, "/bin/sh", "-c", script)
	if err != nil || r.ExitCode != 0 {
		t.Fatal(r, err)
	}
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	if len(lines) != 100 {
		t.Fatalf("%d result lines:\n%s", len(lines), r.Stdout)
	}
	for _, l := range lines {
		var i, code int
		var out string
		if _, err := fmt.Sscan(l, &i, &code, &out); err != nil || code != i%50 || out != fmt.Sprintf("out-%d", i) {
			t.Errorf("exec %q: want exit %d and out-%d (%v)", l, i%50, i, err)
		}
	}
}

// TestGiBThroughStdinStdout sends 1 GiB of pseudo-random bytes through a
// DPU-side rexec into cat on the host and back, and compares checksums. The
// same bytes through a DPU-side local cat are the baseline.
func TestGiBThroughStdinStdout(t *testing.T) {
	const size = 1 << 30
	ctx := testContext(t, 5*time.Minute)
	run := func(args ...string) (time.Duration, [32]byte, [32]byte) {
		cmd := testbed.DPUCommand(ctx, args...)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		in := sha256.New()
		go func() {
			src := rand.NewChaCha8([32]byte{1, 2, 3})
			_, err := io.Copy(io.MultiWriter(stdin, in), io.LimitReader(src, size))
			if err != nil {
				t.Errorf("write stdin: %v", err)
			}
			stdin.Close()
		}()
		out := sha256.New()
		n, err := io.Copy(out, stdout)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		d := time.Since(start)
		if n != size {
			t.Fatalf("%q: %d bytes back, want %d", args, n, size)
		}
		return d, [32]byte(in.Sum(nil)), [32]byte(out.Sum(nil))
	}
	base, bin, bout := run("/bin/cat")
	if bin != bout {
		t.Fatal("baseline checksum differs")
	}
	d, in, out := run(client("--", "/bin/cat")...)
	if in != out {
		t.Fatalf("checksum of what came back (%x) differs from what was sent (%x)", out, in)
	}
	mb := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	t.Logf("1 GiB via rexec (DPU → host cat → DPU, TCP+mTLS): %v, %.0f MB/s; local cat on the DPU side: %v, %.0f MB/s; ratio %.2f",
		d.Round(time.Millisecond), mb(d), base.Round(time.Millisecond), mb(base), mb(d)/mb(base))
}

// TestKillOnClientDeath kills the DPU-side client and checks that the host
// process group is gone (by pid, on the host).
func TestKillOnClientDeath(t *testing.T) {
	ctx := testContext(t, time.Minute)
	cmd := testbed.DPUCommand(ctx, client("--", "/bin/sh", "-c", "sleep 300 & echo $$ $!; wait")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var sh, sleep int
	if _, err := fmt.Sscan(line, &sh, &sleep); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	// Those pids are host pids: this test runs on the host side.
	for _, pid := range []int{sh, sleep} {
		if !alive(pid) {
			t.Fatalf("host process %d not running", pid)
		}
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range []int{sh, sleep} {
		for alive(pid) {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("host process %d survived its client", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestCNIBridgeThroughWrappers runs Debian's bridge plugin (with host-local
// IPAM) from the DPU side through the installed wrapper: the interface must
// appear in a host network namespace at the DPU's netns path, and the
// result the DPU gets is the host's.
func TestCNIBridgeThroughWrappers(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	wrapDir := filepath.Join(bed.dir, "wrappers")
	cniDir := filepath.Join(wrapDir, "cni")
	out, err := exec.CommandContext(ctx, bed.offloadctl, "wrappers", "install", "--rexec", bed.rexec, "--cni-dir", cniDir, wrapDir).CombinedOutput()
	if err != nil {
		t.Fatalf("offloadctl wrappers install: %v\n%s", err, out)
	}

	name := fmt.Sprintf("rexec-e2e-%d", os.Getpid())
	nsPath := "/run/netns/" + name
	const bridge = "rxe2e-br0"
	t.Cleanup(func() {
		exec.Command("ip", "netns", "exec", testbed.HostNetns, "ip", "link", "del", bridge).Run()
		exec.Command("umount", "-l", nsPath).Run()
		os.Remove(nsPath)
		testbed.DPU(context.Background(), "ip", "netns", "del", name)
	})
	// containerd on the DPU would have created the pod's netns there.
	testbed.MustDPU(t, "ip", "netns", "add", name)

	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"rexec-e2e","type":"bridge","bridge":%q,"isGateway":false,"ipMasq":false,
"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"192.0.2.128/26"}]]}}`, bridge, filepath.Join(bed.dir, "ipam"))
	cni := func(command string) testbed.Result {
		cmd := testbed.DPUCommand(ctx, "env", "REXEC_CONFIG="+bed.clientCfg, "CNI_COMMAND="+command, "CNI_CONTAINERID=rexec-e2e",
			"CNI_NETNS="+nsPath, "CNI_IFNAME=eth0", "CNI_PATH="+cniDir, filepath.Join(cniDir, "bridge"))
		cmd.Stdin = strings.NewReader(conf)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r := testbed.Result{Stdout: stdout.String(), Stderr: stderr.String()}
		if err != nil {
			t.Fatalf("CNI %s: %v\nstdout %s\nstderr %s", command, err, r.Stdout, r.Stderr)
		}
		return r
	}
	r := cni("ADD")
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("ADD result %q: %v", r.Stdout, err)
	}
	ip := res.IPs[0].Address
	// The host (this process's mount namespace) has a netns at that path
	// whose eth0 carries the address the DPU was told.
	hostAddr, err := exec.Command("ip", "-n", name, "-o", "-4", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(hostAddr), " "+ip+" ") {
		t.Fatalf("host netns %s eth0: %v %q, want %s", nsPath, err, hostAddr, ip)
	}
	if out, err := exec.Command("ip", "netns", "exec", testbed.HostNetns, "ip", "link", "show", bridge).CombinedOutput(); err != nil {
		t.Errorf("bridge %s not in the host side's netns: %v %s", bridge, err, out)
	}
	// The DPU's namespace of the same path was not touched.
	if dr, _ := testbed.DPU(ctx, "ip", "-n", name, "link", "show", "eth0"); dr.ExitCode == 0 {
		t.Errorf("eth0 appeared in the DPU-side netns: %s", dr.Stdout)
	}

	cni("DEL")
	if _, err := os.Stat(nsPath); !os.IsNotExist(err) {
		t.Errorf("host netns %s still there after DEL: %v", nsPath, err)
	}
	// host-local released the address.
	if b, err := os.ReadFile(filepath.Join(bed.dir, "ipam", "rexec-e2e", strings.Split(ip, "/")[0])); err == nil {
		t.Errorf("address still reserved after DEL: %s", b)
	}
}

// TestMountWrapper mounts a tmpfs from the DPU side onto a shared path: it
// must be mounted on the host. A mount elsewhere stays on the DPU side.
func TestMountWrapper(t *testing.T) {
	ctx := testContext(t, time.Minute)
	wrapDir := filepath.Join(bed.dir, "mountwrappers")
	if out, err := exec.CommandContext(ctx, bed.offloadctl, "wrappers", "install", "--rexec", bed.rexec, "--cni-plugin", "bridge", wrapDir).CombinedOutput(); err != nil {
		t.Fatalf("offloadctl wrappers install: %v\n%s", err, out)
	}
	target := filepath.Join(bed.shared, "vol"+strconv.Itoa(os.Getpid()%1000))
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", target).Run() })
	env := []string{"env", "REXEC_CONFIG=" + bed.clientCfg}
	dpu := func(args ...string) testbed.Result {
		r, err := testbed.DPU(ctx, append(env, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := dpu(filepath.Join(wrapDir, "mount"), "-t", "tmpfs", "-o", "size=1m", "rexec-e2e", target); r.ExitCode != 0 {
		t.Fatalf("mount through the wrapper: %+v", r)
	}
	if !mountedHere(t, target, "tmpfs") {
		t.Fatalf("%s is not a tmpfs mount on the host", target)
	}
	// Visible to host processes: a file written on the host lands in it.
	if err := os.WriteFile(filepath.Join(target, "marker"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := dpu(filepath.Join(wrapDir, "umount"), target); r.ExitCode != 0 {
		t.Fatalf("umount through the wrapper: %+v", r)
	}
	if mountedHere(t, target, "tmpfs") {
		t.Errorf("%s still mounted on the host after umount", target)
	}
	if _, err := os.Stat(filepath.Join(target, "marker")); !os.IsNotExist(err) {
		t.Errorf("marker still visible after umount: %v", err)
	}

	// Not shared: a DPU-local mount, which the host does not see. /tmp is
	// private to the DPU side.
	if r := dpu("/bin/sh", "-ec", fmt.Sprintf(`d=$(mktemp -d); %s -t tmpfs -o size=1m rexec-e2e-local "$d"; grep -q " $d tmpfs " /proc/self/mounts; %s "$d"; rmdir "$d"`,
		filepath.Join(wrapDir, "mount"), filepath.Join(wrapDir, "umount"))); r.ExitCode != 0 {
		t.Errorf("local mount through the wrapper: %+v", r)
	}
	// Not allowed by the host's argument patterns: refused with 126, and
	// nothing mounted.
	if r := dpu(filepath.Join(wrapDir, "mount"), "--bind", "/etc", target); r.ExitCode != 126 || mountedHere(t, target, "") {
		t.Errorf("bind mount not refused: %+v", r)
	}
}

// mountedHere reports whether path is a mount point (of fstype, if given)
// in this process's mount namespace: the host's.
func mountedHere(t *testing.T, path, fstype string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || f[4] != path {
			continue
		}
		if fstype == "" {
			return true
		}
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == fstype {
				return true
			}
		}
	}
	return false
}

var _ = context.Background
