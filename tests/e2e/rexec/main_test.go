//go:build e2e

// Package rexec_test runs rexec across the testbed: the server on the host
// side (tcp://192.0.2.1 with mTLS), the client and the wrappers on the DPU
// side.
package rexec_test

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

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/tests/testbed"
)

// bed is what TestMain sets up for the tests. Its directory is under
// /var/tmp, which (unlike /tmp) both sides see at the same path.
var bed struct {
	dir        string // everything of this run
	rexec      string // the rexec binary (also the host's netns helper)
	offloadctl string
	certs      string
	addr       string
	shared     string // stands in for a qtfs-shared prefix
	clientCfg  string // REXEC_CONFIG for the DPU side
	serveLog   string
	server     *exec.Cmd
}

func TestMain(m *testing.M) { testbed.MainWith(m, setup, teardown) }

func setup() error {
	var err error
	if bed.dir, err = os.MkdirTemp("/var/tmp", "rexec-e2e-"); err != nil {
		return err
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	bed.rexec = filepath.Join(bed.dir, "rexec")
	bed.offloadctl = filepath.Join(bed.dir, "offloadctl")
	for bin, pkg := range map[string]string{bed.rexec: "./cmd/rexec", bed.offloadctl: "./cmd/offloadctl"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	bed.certs = filepath.Join(bed.dir, "certs")
	if err := transport.GenerateCerts(bed.certs, []string{testbed.HostIP}); err != nil {
		return err
	}
	bed.shared = filepath.Join(bed.dir, "shared")
	if err := os.MkdirAll(bed.shared, 0o755); err != nil {
		return err
	}
	bed.addr = fmt.Sprintf("tcp://%s:%d", testbed.HostIP, 17000+os.Getpid()%2000)

	// What the tests need, and no more: the netns helper and mount get
	// argument patterns.
	serveCfg := fmt.Sprintf(`listen = %q
tls_dir = %q

[[rexec.allow]]
path = "/bin/sh"

[[rexec.allow]]
path = "/bin/cat"

[[rexec.allow]]
path = "/usr/lib/cni/bridge"

[[rexec.allow]]
path = %q
args = ["netns", "add|del", "/run/netns/rexec-e2e-[a-z0-9]+"]

[[rexec.allow]]
path = "/usr/bin/mount"
args = ["-t", "tmpfs", "-o", "size=[0-9]+[kmg]?", "[a-z0-9-]+", %q]

[[rexec.allow]]
path = "/usr/bin/umount"
args = [%q]
`, bed.addr, bed.certs, bed.rexec, regexpQuote(bed.shared)+"/[a-z0-9]+", regexpQuote(bed.shared)+"/[a-z0-9]+")
	cfgPath := filepath.Join(bed.dir, "serve.toml")
	if err := os.WriteFile(cfgPath, []byte(serveCfg), 0o600); err != nil {
		return err
	}
	bed.clientCfg = filepath.Join(bed.dir, "rexec.toml")
	clientCfg := fmt.Sprintf(`addr = %q
tls_dir = %q

[wrappers]
netns_helper = %q
shared_prefixes = [%q]
`, bed.addr, bed.certs, bed.rexec, bed.shared)
	if err := os.WriteFile(bed.clientCfg, []byte(clientCfg), 0o600); err != nil {
		return err
	}

	bed.serveLog = filepath.Join(bed.dir, "serve.log")
	logf, err := os.Create(bed.serveLog)
	if err != nil {
		return err
	}
	defer logf.Close()
	bed.server = testbed.HostCommand(context.Background(), bed.rexec, "serve", "--config", cfgPath)
	bed.server.Stdout, bed.server.Stderr = logf, logf
	bed.server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := bed.server.Start(); err != nil {
		return err
	}
	// Ready when a DPU-side client gets through.
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := testbed.DPU(context.Background(), client("--", "/bin/sh", "-c", "exit 0")...)
		if err == nil && r.ExitCode == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(bed.serveLog)
			return fmt.Errorf("rexec server not reachable: %v %+v\n%s", err, r, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func teardown() {
	if bed.server != nil && bed.server.Process != nil {
		_ = syscall.Kill(-bed.server.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { bed.server.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-bed.server.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if bed.dir != "" {
		// A failed mount test may leave its tmpfs behind.
		_ = exec.Command("umount", "-R", "-l", bed.shared).Run()
		os.RemoveAll(bed.dir)
	}
}

// client returns the DPU-side rexec command line with the run's address and
// certificates, followed by args.
func client(args ...string) []string {
	return append([]string{bed.rexec, "--config", bed.clientCfg}, args...)
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
