package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/rexec"
)

// The test binary doubles as the rexec command when REXEC_TEST_MAIN is set,
// so the tests exercise the real flag handling, signal forwarding and exit
// codes.
func TestMain(m *testing.M) {
	if os.Getenv("REXEC_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serve(t *testing.T, allow ...string) string {
	t.Helper()
	var cfg rexec.ServerConfig
	for _, p := range allow {
		cfg.Allow = append(cfg.Allow, rexec.AllowRule{Path: p})
	}
	srv, err := rexec.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Through the transport, as the real server: the client sends its
	// channel preface.
	addr, err := transport.ParseAddress("unix://" + filepath.Join(t.TempDir(), "rexec.sock"))
	if err != nil {
		t.Fatal(err)
	}
	mux, err := transport.Listen(context.Background(), addr, transport.Security{})
	if err != nil {
		t.Fatal(err)
	}
	l := mux.Channel(transport.ChannelRexec)
	go mux.Serve()
	go srv.Serve(l)
	t.Cleanup(func() {
		mux.Close()
		srv.Close()
	})
	return addr.String()
}

// rexecCmd runs this test binary as `rexec ARGS…` against addr.
func rexecCmd(ctx context.Context, t *testing.T, addr string, args ...string) *exec.Cmd {
	cfg := filepath.Join(t.TempDir(), "rexec.toml")
	if err := os.WriteFile(cfg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = []string{"REXEC_TEST_MAIN=1", "REXEC_ADDR=" + addr, "REXEC_CONFIG=" + cfg, "HOME=/x"}
	return cmd
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatal(err)
	}
	return ee.ExitCode()
}

func TestExitCodes(t *testing.T) {
	addr := serve(t, "/bin/sh", "/bin/sleep")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--", "/bin/sh", "-c", "exit 3"}, 3, ""},
		{[]string{"--env", "A=1", "--env", "HOME", "--cwd", "/tmp", "--", "/bin/sh", "-c", `echo "$A $HOME $(pwd)"`}, 0, "1 /x /tmp\n"},
		{[]string{"--", "/usr/bin/env"}, 126, ""},
		{[]string{"--timeout", "100ms", "--", "/bin/sleep", "10"}, 124, ""},
		{[]string{"--addr", "unix:///nonexistent.sock", "--", "/bin/sh"}, 255, ""},
		{[]string{"--", "relative"}, 126, ""},
	} {
		cmd := rexecCmd(ctx, t, addr, tc.args...)
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.Output()
		if code := exitCode(t, err); code != tc.code || string(out) != tc.out {
			t.Errorf("rexec %q: exit %d stdout %q, want %d %q", tc.args, code, out, tc.code, tc.out)
		}
	}
}

func TestSignalForwarding(t *testing.T) {
	addr := serve(t, "/bin/sh")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := rexecCmd(ctx, t, addr, "-n", "--", "/bin/sh", "-c", "trap 'exit 42' HUP; echo ready; while :; do sleep 0.02; done")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("%q %v", l, err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	if code := exitCode(t, cmd.Wait()); code != 42 {
		t.Errorf("exit %d, want 42 from the trapped HUP", code)
	}
}

// TestTTYWindowSize runs the client on a terminal: its size goes with the
// exec and a SIGWINCH sends the new one.
func TestTTYWindowSize(t *testing.T) {
	addr := serve(t, "/bin/sh")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	mfd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(unix.IoctlSetWinsize(mfd, unix.TIOCSWINSZ, &unix.Winsize{Row: 30, Col: 100}))
	cmd := rexecCmd(ctx, t, addr, "--tty", "--", "/bin/sh", "-c", "stty size; read x; stty size; exit 7")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	must(cmd.Start())
	lines := make(chan string, 10)
	go func() {
		r := bufio.NewReader(master)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- strings.TrimRight(l, "\r\n")
		}
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("no output")
			return ""
		}
	}
	if l := next(); l != "30 100" {
		t.Fatalf("initial size %q", l)
	}
	must(unix.IoctlSetWinsize(mfd, unix.TIOCSWINSZ, &unix.Winsize{Row: 50, Col: 160}))
	must(cmd.Process.Signal(unix.SIGWINCH))
	time.Sleep(200 * time.Millisecond)
	_, err = master.Write([]byte("go\r"))
	must(err)
	for l := next(); l != "50 160"; l = next() {
		if l != "go" { // the remote terminal's echo
			t.Fatalf("size after SIGWINCH %q", l)
		}
	}
	if code := exitCode(t, cmd.Wait()); code != 7 {
		t.Errorf("exit %d", code)
	}
}
