//go:build e2e

package qtfs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// target is one way of reaching an export directory. mount returns a fresh
// view of it (a new FUSE mount for every call, so client caches start cold)
// and a function that tears it down.
type target struct {
	name  string
	mount func(export string) (dir string, unmount func() error, err error)
	close func() // releases what the target set up (sshd, namespaces)
}

func nativeTarget() *target {
	return &target{
		name:  "native",
		mount: func(export string) (string, func() error, error) { return export, func() error { return nil }, nil },
		close: func() {},
	}
}

// loopbackEnv makes the test binary serve a go-fuse loopback mount in a
// child process, so the FUSE server has its own process like qtfs and sshfs.
const loopbackEnv = "QTFS_BENCH_LOOPBACK"

func init() {
	if v := os.Getenv(loopbackEnv); v != "" {
		os.Exit(serveLoopback(v))
	}
}

func serveLoopback(v string) int {
	orig, mnt := v, os.Getenv(loopbackEnv+"_MNT")
	if mnt == "" {
		fmt.Fprintln(os.Stderr, "bad", loopbackEnv)
		return 2
	}
	root, err := fs.NewLoopbackRoot(orig)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// go-fuse's defaults (what fs.Mount applies for nil options): 1 s entry
	// and attribute timeouts.
	sec := time.Second
	srv, err := fs.Mount(mnt, root, &fs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: fuse.MountOptions{FsName: "bench-loopback"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("ready")
	<-sig
	if err := srv.Unmount(); err != nil {
		fmt.Fprintln(os.Stderr, "unmount:", err)
		return 1
	}
	return 0
}

func loopbackTarget(base string) *target {
	n := 0
	return &target{
		name: "loopback",
		mount: func(export string) (string, func() error, error) {
			n++
			mnt := filepath.Join(base, fmt.Sprintf("loopback-mnt-%d", n))
			if err := os.MkdirAll(mnt, 0o755); err != nil {
				return "", nil, err
			}
			cmd := exec.Command("/proc/self/exe")
			cmd.Env = append(os.Environ(), loopbackEnv+"="+export, loopbackEnv+"_MNT="+mnt)
			out, err := cmd.StdoutPipe()
			if err != nil {
				return "", nil, err
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				return "", nil, err
			}
			ready := make(chan bool, 1)
			go func() {
				line, _ := bufio.NewReader(out).ReadString('\n')
				ready <- strings.TrimSpace(line) == "ready"
			}()
			select {
			case ok := <-ready:
				if !ok {
					cmd.Process.Kill()
					cmd.Wait()
					return "", nil, fmt.Errorf("loopback server did not start")
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				cmd.Wait()
				return "", nil, fmt.Errorf("loopback server start timed out")
			}
			return mnt, func() error {
				cmd.Process.Signal(syscall.SIGTERM)
				return waitOrKill(cmd, mnt)
			}, nil
		},
		close: func() {},
	}
}

// waitOrKill waits for a FUSE server process to exit after its unmount
// was requested; after 10 s it detaches the mount and kills the process.
func waitOrKill(cmd *exec.Cmd, mnt string) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s exited: %w", cmd.Path, err)
		}
		return nil
	case <-time.After(10 * time.Second):
		exec.Command("fusermount", "-u", "-z", mnt).Run()
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit after unmount; killed", cmd.Path)
	}
}

// netPair is two network namespaces joined by a veth pair: the "host"
// side (192.0.2.11) serves, the "dpu" side (192.0.2.12) mounts.
type netPair struct {
	host, dpu string
}

const (
	hostIP = "192.0.2.11"
	dpuIP  = "192.0.2.12"
)

func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func newNetPair() (*netPair, error) {
	id := os.Getpid() % 100000
	p := &netPair{host: fmt.Sprintf("qtfsbench-h%d", id), dpu: fmt.Sprintf("qtfsbench-d%d", id)}
	vh, vd := fmt.Sprintf("qbh%d", id), fmt.Sprintf("qbd%d", id)
	steps := [][]string{
		{"netns", "add", p.host},
		{"netns", "add", p.dpu},
		{"link", "add", vh, "type", "veth", "peer", "name", vd},
		{"link", "set", vh, "netns", p.host},
		{"link", "set", vd, "netns", p.dpu},
		{"-n", p.host, "addr", "add", hostIP + "/24", "dev", vh},
		{"-n", p.dpu, "addr", "add", dpuIP + "/24", "dev", vd},
		{"-n", p.host, "link", "set", vh, "up"},
		{"-n", p.dpu, "link", "set", vd, "up"},
		{"-n", p.host, "link", "set", "lo", "up"},
		{"-n", p.dpu, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run("ip", s...); err != nil {
			p.close()
			return nil, err
		}
	}
	return p, nil
}

func (p *netPair) close() {
	run("ip", "netns", "del", p.host)
	run("ip", "netns", "del", p.dpu)
}

// inHost runs a command in the host namespace (ip netns exec gives it a
// private mount namespace too; it still sees the export, mounted earlier).
func (p *netPair) inHost(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", p.host, name}, args...)...)
}

// inDPU runs a command with only the network namespace switched, so FUSE
// mounts it makes are visible to this process.
func (p *netPair) inDPU(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + p.dpu, name}, args...)...)
}

// waitMounted polls mountinfo until mnt is a mount point or the process
// that should mount it exits.
func waitMounted(mnt string, exited <-chan error) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 4 && f[4] == mnt {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("mount process exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not mounted after 15s", mnt)
}

// startMountProc starts a foreground FUSE client and waits for its mount.
func startMountProc(cmd *exec.Cmd, mnt string, logf string) (func(unmount *exec.Cmd) error, error) {
	lf, err := os.Create(logf)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); lf.Close() }()
	if err := waitMounted(mnt, exited); err != nil {
		cmd.Process.Kill()
		exec.Command("fusermount", "-u", "-z", mnt).Run()
		log, _ := os.ReadFile(logf)
		return nil, fmt.Errorf("%w: %s", err, bytes.TrimSpace(log))
	}
	return func(unmount *exec.Cmd) error {
		var uerr error
		if out, err := unmount.CombinedOutput(); err != nil {
			uerr = fmt.Errorf("unmount %s: %v: %s", mnt, err, bytes.TrimSpace(out))
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			exec.Command("fusermount", "-u", "-z", mnt).Run()
			cmd.Process.Kill()
			<-exited
			if uerr == nil {
				uerr = fmt.Errorf("%s did not exit after unmount; killed", mnt)
			}
		}
		return uerr
	}, nil
}

// sshfsTarget runs sshd in the host namespace and sshfs in the DPU one.
func sshfsTarget(base string, np *netPair) (*target, error) {
	for _, b := range []string{"/usr/sbin/sshd", "/usr/bin/sshfs", "/usr/bin/ssh-keygen"} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("%s missing (bash tests/testbed/provision installs sshfs and openssh-server)", b)
		}
	}
	dir := filepath.Join(base, "ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	for _, k := range []string{"hostkey", "id"} {
		if err := run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)); err != nil {
			return nil, err
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id.pub"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`ListenAddress %s:2222
HostKey %s/hostkey
AuthorizedKeysFile %s/authorized_keys
PidFile %s/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
`, hostIP, dir, dir, dir)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	sshd := np.inHost("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	lf, _ := os.Create(filepath.Join(dir, "sshd.log"))
	sshd.Stdout, sshd.Stderr = lf, lf
	if err := sshd.Start(); err != nil {
		return nil, err
	}
	sshdDone := make(chan struct{})
	go func() { sshd.Wait(); lf.Close(); close(sshdDone) }()
	stop := func() {
		sshd.Process.Signal(syscall.SIGTERM)
		select {
		case <-sshdDone:
		case <-time.After(5 * time.Second):
			sshd.Process.Kill()
			<-sshdDone
		}
	}
	// Wait for sshd to listen.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := np.inDPU("ssh", "-i", filepath.Join(dir, "id"), "-p", "2222", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
			"root@"+hostIP, "true").Run(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			return nil, fmt.Errorf("sshd on %s:2222 not reachable: %s", hostIP, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	n := 0
	return &target{
		name: "sshfs",
		mount: func(export string) (string, func() error, error) {
			n++
			mnt := filepath.Join(base, fmt.Sprintf("sshfs-mnt-%d", n))
			if err := os.MkdirAll(mnt, 0o755); err != nil {
				return "", nil, err
			}
			cmd := np.inDPU("sshfs", "-f",
				"-o", "IdentityFile="+filepath.Join(dir, "id"),
				"-o", "port=2222",
				"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
				"root@"+hostIP+":"+export, mnt)
			stopMount, err := startMountProc(cmd, mnt, filepath.Join(dir, fmt.Sprintf("sshfs-%d.log", n)))
			if err != nil {
				return "", nil, err
			}
			return mnt, func() error { return stopMount(exec.Command("fusermount", "-u", mnt)) }, nil
		},
		close: stop,
	}, nil
}

// qtfsBinary finds ./bin/qtfs at the module root (or $QTFS_BIN).
func qtfsBinary() (string, error) {
	if b := os.Getenv("QTFS_BIN"); b != "" {
		return b, nil
	}
	wd, _ := os.Getwd()
	for d := wd; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			b := filepath.Join(d, "bin", "qtfs")
			if _, err := os.Stat(b); err != nil {
				return "", fmt.Errorf("%s missing (run make build once cmd/qtfs exists)", b)
			}
			return b, nil
		}
	}
	return "", fmt.Errorf("module root not found from %s", wd)
}

// qtfsTarget serves the export with `qtfs serve` in the host namespace over
// TCP (mTLS when the binary has --tls-dir, else --insecure) and mounts it
// with `qtfs mount` from the DPU namespace.
func qtfsTarget(base string, np *netPair, export string) (*target, string, error) {
	bin, err := qtfsBinary()
	if err != nil {
		return nil, "", err
	}
	help, _ := exec.Command(bin, "serve", "--help").CombinedOutput()
	dir := filepath.Join(base, "qtfs")
	os.MkdirAll(dir, 0o700)
	var secFlags []string
	mode := "TCP+mTLS"
	if bytes.Contains(help, []byte("tls-dir")) {
		certs := filepath.Join(dir, "certs")
		if err := transport.GenerateCerts(certs, []string{hostIP}); err != nil {
			return nil, "", fmt.Errorf("generate certs: %w", err)
		}
		secFlags = []string{"--tls-dir", certs}
	} else {
		secFlags = []string{"--insecure"}
		mode = "plain TCP (--insecure: this qtfs has no --tls-dir flag)"
	}
	addr := "tcp://" + hostIP + ":7443"
	t, err := startQtfs("qtfs", bin, dir, export, addr, secFlags, np.inHost, np.inDPU)
	return t, mode, err
}

// qtfsUnixTarget serves and mounts the export over a unix socket in the
// root namespaces: no TLS and no TCP, so its numbers are the protocol's and
// FUSE's cost alone (a stand-in for vsock, which cannot be tested end to end
// on one machine).
func qtfsUnixTarget(base, export string) (*target, error) {
	bin, err := qtfsBinary()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(base, "qtfs-unix")
	os.MkdirAll(dir, 0o700)
	here := func(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
	return startQtfs("qtfs-unix", bin, dir, export, "unix://"+filepath.Join(dir, "qtfs.sock"), nil, here, here)
}

// startQtfs starts `qtfs serve` for export on addr with inServer, and
// returns a target whose mounts run `qtfs mount` with inClient.
func startQtfs(name, bin, dir, export, addr string, secFlags []string, inServer, inClient func(string, ...string) *exec.Cmd) (*target, error) {
	srv := inServer(bin, append(append([]string{"serve", "--listen", addr}, secFlags...), "--export", "bench="+export)...)
	lf, _ := os.Create(filepath.Join(dir, "serve.log"))
	srv.Stdout, srv.Stderr = lf, lf
	if err := srv.Start(); err != nil {
		return nil, err
	}
	srvDone := make(chan struct{})
	go func() { srv.Wait(); lf.Close(); close(srvDone) }()
	stop := func() {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case <-srvDone:
		case <-time.After(5 * time.Second):
			srv.Process.Kill()
			<-srvDone
		}
	}
	base := filepath.Dir(dir)
	n := 0
	t := &target{
		name: name,
		mount: func(exp string) (string, func() error, error) {
			if exp != export {
				return "", nil, fmt.Errorf("%s target serves %s only", name, export)
			}
			n++
			mnt := filepath.Join(base, fmt.Sprintf("%s-mnt-%d", name, n))
			if err := os.MkdirAll(mnt, 0o755); err != nil {
				return "", nil, err
			}
			args := append(append([]string{"mount"}, secFlags...), addr, "bench", mnt)
			var stopMount func(*exec.Cmd) error
			var err error
			// The server may still be starting: retry the first mount.
			for try := 0; try < 20; try++ {
				stopMount, err = startMountProc(inClient(bin, args...), mnt, filepath.Join(dir, fmt.Sprintf("mount-%d.log", n)))
				if err == nil {
					break
				}
				select {
				case <-srvDone:
					log, _ := os.ReadFile(filepath.Join(dir, "serve.log"))
					return "", nil, fmt.Errorf("qtfs serve exited: %s", bytes.TrimSpace(log))
				case <-time.After(250 * time.Millisecond):
				}
			}
			if err != nil {
				return "", nil, err
			}
			return mnt, func() error { return stopMount(exec.Command(bin, "umount", mnt)) }, nil
		},
		close: stop,
	}
	return t, nil
}
