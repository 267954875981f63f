package rexec

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// testServer serves cfg on a unix socket in a temp dir and returns a client
// for it. Everything is torn down at the end of the test.
func testServer(t *testing.T, cfg ServerConfig) (*Server, *Client) {
	t.Helper()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "rexec.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	var d net.Dialer
	return srv, NewClient(func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", sock) })
}

func allowAll(paths ...string) ServerConfig {
	var cfg ServerConfig
	for _, p := range paths {
		cfg.Allow = append(cfg.Allow, AllowRule{Path: p})
	}
	return cfg
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestExitCodes(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/sh"))
	ctx := testContext(t)
	for _, tc := range []struct {
		script string
		code   int
		signal string
	}{
		{"exit 0", 0, ""},
		{"exit 3", 3, ""},
		{"exit 255", 255, ""},
		{"kill -USR1 $$", 128 + int(unix.SIGUSR1), "USR1"},
		{"kill -9 $$", 137, "KILL"},
	} {
		st, err := c.Run(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", tc.script}})
		if err != nil {
			t.Fatalf("%q: %v", tc.script, err)
		}
		if st.Code != tc.code || st.Signal != tc.signal {
			t.Errorf("%q: got %+v, want code %d signal %q", tc.script, st, tc.code, tc.signal)
		}
	}
}

// lineWriter delivers the first line written to it on a channel.
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func newLineWriter() *lineWriter { return &lineWriter{lines: make(chan string, 100)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		i := bytes.IndexByte(w.buf.Bytes(), '\n')
		if i < 0 {
			return len(p), nil
		}
		w.lines <- strings.TrimRight(string(w.buf.Next(i+1)), "\r\n")
	}
}

func (w *lineWriter) next(t *testing.T) string {
	t.Helper()
	select {
	case l := <-w.lines:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for output")
		return ""
	}
}

func TestSignalsForwarded(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/sh"))
	ctx := testContext(t)
	for i, name := range []string{"INT", "TERM", "HUP", "QUIT", "USR1", "USR2"} {
		out := newLineWriter()
		// The trap turns the signal into a distinct exit code.
		script := fmt.Sprintf(`trap 'exit %d' %s; echo ready; while :; do sleep 0.02; done`, 10+i, name)
		e, err := c.Start(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", script}, Stdout: out})
		if err != nil {
			t.Fatal(err)
		}
		if l := out.next(t); l != "ready" {
			t.Fatalf("got %q", l)
		}
		if err := e.Signal(name); err != nil {
			t.Fatal(err)
		}
		st, err := e.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if st.Code != 10+i {
			t.Errorf("%s: exit %+v, want %d", name, st, 10+i)
		}
	}
	// An untrapped TERM kills: 128+15.
	out := newLineWriter()
	e, err := c.Start(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", "echo ready; exec sleep 100"}, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.next(t)
	if err := e.Signal("TERM"); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Wait(); err != nil || st.Code != 143 || st.Signal != "TERM" {
		t.Errorf("got %+v, %v; want 143 TERM", st, err)
	}
	if err := e.Signal("WINCH"); err == nil {
		t.Error("Signal(WINCH) accepted")
	}
}

func TestEnvironmentAndCwd(t *testing.T) {
	_, c := testServer(t, allowAll("/usr/bin/env", "/bin/pwd"))
	ctx := testContext(t)
	t.Setenv("REXEC_LEAK", "from-server")
	var out bytes.Buffer
	env := []string{"A=1", "B=two words", "EMPTY="}
	st, err := c.Run(ctx, &Cmd{Path: "/usr/bin/env", Env: env, Stdout: &out})
	if err != nil || st.Code != 0 {
		t.Fatal(st, err)
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); !equal(got, env) {
		t.Errorf("environment %q, want exactly %q", got, env)
	}
	out.Reset()
	if st, err := c.Run(ctx, &Cmd{Path: "/usr/bin/env", Stdout: &out}); err != nil || st.Code != 0 || out.Len() != 0 {
		t.Errorf("empty environment: %+v %v %q", st, err, out.String())
	}
	dir := t.TempDir()
	out.Reset()
	if st, err := c.Run(ctx, &Cmd{Path: "/bin/pwd", Dir: dir, Stdout: &out}); err != nil || st.Code != 0 {
		t.Fatal(st, err)
	}
	if got := strings.TrimSpace(out.String()); got != dir {
		t.Errorf("cwd %q, want %q", got, dir)
	}
	out.Reset()
	if st, err := c.Run(ctx, &Cmd{Path: "/bin/pwd", Stdout: &out}); err != nil || strings.TrimSpace(out.String()) != "/" {
		t.Errorf("default cwd: %+v %v %q", st, err, out.String())
	}
	_, err = c.Run(ctx, &Cmd{Path: "/bin/pwd", Dir: filepath.Join(dir, "missing")})
	var re *RefusedError
	if !errors.As(err, &re) || re.Code != ExitNotAllowed || !strings.Contains(re.Message, "missing") {
		t.Errorf("missing cwd: %v", err)
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

func TestStdioStreams(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/sh", "/bin/cat"))
	ctx := testContext(t)

	// Binary data through stdin and back on stdout, with a checksum.
	const size = 32 << 20
	data := make([]byte, size)
	rand.Read(data)
	h := sha256.New()
	st, err := c.Run(ctx, &Cmd{Path: "/bin/cat", Stdin: bytes.NewReader(data), Stdout: h})
	if err != nil || st.Code != 0 {
		t.Fatal(st, err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Error("stdout checksum differs from stdin's")
	}

	// stdout and stderr stay apart; EOF on stdin reaches the process.
	var out, errOut bytes.Buffer
	st, err = c.Run(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", `n=$(cat | wc -c); echo "out $n"; echo err >&2; exit 4`},
		Stdin: strings.NewReader("12345"), Stdout: &out, Stderr: &errOut})
	if err != nil || st.Code != 4 || out.String() != "out 5\n" || errOut.String() != "err\n" {
		t.Errorf("got %+v %v stdout %q stderr %q", st, err, out.String(), errOut.String())
	}

	// Without Stdin the process reads /dev/null.
	out.Reset()
	if st, err := c.Run(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", "cat; echo done"}, Stdout: &out}); err != nil || st.Code != 0 || out.String() != "done\n" {
		t.Errorf("no stdin: %+v %v %q", st, err, out.String())
	}

	// A process that exits without reading its stdin does not hang the exec.
	st, err = c.Run(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", "exit 5"}, Stdin: io.LimitReader(zeroReader{}, 64<<20)})
	if err != nil || st.Code != 5 {
		t.Errorf("unread stdin: %+v %v", st, err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestTTY(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/sh"))
	ctx := testContext(t)
	out := newLineWriter()
	inR, inW := io.Pipe()
	defer inW.Close()
	script := `test -t 0 && test -t 1 && echo tty; stty size; read x; stty size; echo "got $x"`
	e, err := c.Start(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", script}, TTY: true,
		Window: &WindowSize{Rows: 24, Cols: 80}, Stdin: inR, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	if l := out.next(t); l != "tty" {
		t.Fatalf("got %q, want tty", l)
	}
	if l := out.next(t); l != "24 80" {
		t.Fatalf("initial size %q", l)
	}
	if err := e.Resize(WindowSize{Rows: 40, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	// The resize frame and the input travel on different connections: give
	// the first a moment so the script's read sees the new size afterwards.
	time.Sleep(100 * time.Millisecond)
	io.WriteString(inW, "hello\n")
	if l := out.next(t); l != "hello" { // the terminal's echo
		t.Fatalf("echo %q", l)
	}
	if l := out.next(t); l != "40 132" {
		t.Fatalf("size after resize %q", l)
	}
	if l := out.next(t); l != "got hello" {
		t.Fatalf("got %q", l)
	}
	if st, err := e.Wait(); err != nil || st.Code != 0 {
		t.Errorf("%+v %v", st, err)
	}
}

func TestAllowlist(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "env-link")      // → a binary that is not allowed
	okLink := filepath.Join(dir, "true-link")   // → an allowed binary
	missing := filepath.Join(dir, "not-here")   // allowed, does not exist
	noexec := filepath.Join(dir, "not-exec.sh") // allowed, not executable
	must(t, os.Symlink("/usr/bin/env", link))
	must(t, os.Symlink("/bin/true", okLink))
	must(t, os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644))
	cfg := allowAll("/bin/true", missing, noexec)
	cfg.Allow = append(cfg.Allow,
		AllowRule{Path: "/bin/echo", Args: []string{"-n", "[a-z]+"}},
		AllowRule{Path: "/bin/sh", Args: []string{"-c", "exit [0-9]", ".*"}, Variadic: true},
	)
	_, c := testServer(t, cfg)
	ctx := testContext(t)
	for _, tc := range []struct {
		path string
		args []string
		code int // 0: allowed and ran
	}{
		{"/bin/true", nil, 0},
		{okLink, nil, 0},
		{"/usr/bin/env", nil, ExitNotAllowed},
		{link, nil, ExitNotAllowed},
		{"/bin/../bin/true", nil, 0},
		{"bin/true", nil, ExitNotAllowed},
		{missing, nil, ExitNotFound},
		{filepath.Join(dir, "other-missing"), nil, ExitNotAllowed}, // no probing
		{noexec, nil, ExitNotAllowed},
		{"/bin/echo", []string{"-n", "abc"}, 0},
		{"/bin/echo", []string{"-n", "abc1"}, ExitNotAllowed},
		{"/bin/echo", []string{"-n"}, ExitNotAllowed},
		{"/bin/echo", []string{"-n", "abc", "def"}, ExitNotAllowed},
		{"/bin/sh", []string{"-c", "exit 0"}, 0},
		{"/bin/sh", []string{"-c", "exit 0", "a", "b"}, 0},
		{"/bin/sh", []string{"-c", "reboot"}, ExitNotAllowed},
	} {
		st, err := c.Run(ctx, &Cmd{Path: tc.path, Args: tc.args})
		if tc.code == 0 {
			if err != nil || st.Code != 0 {
				t.Errorf("%s %q: %+v %v, want success", tc.path, tc.args, st, err)
			}
			continue
		}
		var re *RefusedError
		if !errors.As(err, &re) || re.Code != tc.code {
			t.Errorf("%s %q: %+v %v, want refusal %d", tc.path, tc.args, st, err, tc.code)
			continue
		}
		var want error = errdefs.ErrPermissionDenied
		if tc.code == ExitNotFound {
			want = errdefs.ErrNotFound
		}
		if !errors.Is(err, want) || !strings.Contains(re.Message, "rexec:") {
			t.Errorf("%s: error %v does not say why", tc.path, err)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []ServerConfig{
		{Allow: []AllowRule{{Path: "bin/sh"}}},
		{Allow: []AllowRule{{Path: "/bin/sh", Args: []string{"("}}}},
		{Allow: []AllowRule{{Path: "/bin/sh", Variadic: true}}},
	} {
		if _, err := NewServer(cfg); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%+v: %v, want invalid argument", cfg, err)
		}
	}
}

func TestRunAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	uid, gid := uint32(65534), uint32(65534)
	_, c := testServer(t, ServerConfig{Allow: []AllowRule{{Path: "/usr/bin/id", UID: &uid, GID: &gid}}})
	var out bytes.Buffer
	if st, err := c.Run(testContext(t), &Cmd{Path: "/usr/bin/id", Args: []string{"-u"}, Stdout: &out}); err != nil || st.Code != 0 {
		t.Fatal(st, err)
	}
	if got := strings.TrimSpace(out.String()); got != "65534" {
		t.Errorf("uid %q", got)
	}
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d still running", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestKillOnDisconnect(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/sh"))
	for _, tty := range []bool{false, true} {
		ctx, cancel := context.WithCancel(testContext(t))
		out := newLineWriter()
		e, err := c.Start(ctx, &Cmd{Path: "/bin/sh", Args: []string{"-c", "sleep 300 & echo $!; wait"}, Stdout: out, TTY: tty})
		if err != nil {
			t.Fatal(err)
		}
		child, err := strconv.Atoi(out.next(t))
		if err != nil {
			t.Fatal(err)
		}
		if !alive(e.Pid()) || !alive(child) {
			t.Fatal("processes not running")
		}
		cancel() // the client goes away: its connections close
		if _, err := e.Wait(); !errors.Is(err, context.Canceled) {
			t.Errorf("Wait after cancel: %v", err)
		}
		waitGone(t, e.Pid(), child)
	}
}

func TestKillOnLinkSilence(t *testing.T) {
	old := keepaliveInterval
	keepaliveInterval = 50 * time.Millisecond
	t.Cleanup(func() { keepaliveInterval = old })
	srv, err := NewServer(allowAll("/bin/sleep"))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	// A client that starts an exec and then says nothing, as if the link
	// dropped without a FIN.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := rawExec(conn, "/bin/sleep", "300")
	if err != nil {
		t.Fatal(err)
	}
	waitGone(t, int(st.GetPid()))
}

func TestConcurrentExecs(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/echo"))
	ctx := testContext(t)
	// No GC during the test: finalizers would close leaked files.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	fdsBefore := openFDs(t)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			st, err := c.Run(ctx, &Cmd{Path: "/bin/echo", Args: []string{strconv.Itoa(i)}, Stdout: &out})
			if err != nil || st.Code != 0 || out.String() != strconv.Itoa(i)+"\n" {
				errs <- fmt.Errorf("exec %d: %+v %v %q", i, st, err, out.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Client and server share this process: every pipe, pty and
	// connection of the 100 execs must be closed again.
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fdsBefore+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d file descriptors open after the execs, %d before", openFDs(t), fdsBefore)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestTimeout(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/sleep"))
	start := time.Now()
	st, err := c.Run(testContext(t), &Cmd{Path: "/bin/sleep", Args: []string{"100"}, Timeout: 200 * time.Millisecond})
	if err != nil || !st.TimedOut || st.Code != 143 {
		t.Errorf("got %+v %v, want timed out by TERM", st, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %v", d)
	}
}

func TestCloseKillsSessions(t *testing.T) {
	srv, c := testServer(t, allowAll("/bin/sleep"))
	e, err := c.Start(testContext(t), &Cmd{Path: "/bin/sleep", Args: []string{"300"}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if _, err := e.Wait(); !errors.Is(err, ErrConnectionLost) {
		t.Errorf("Wait after server close: %v", err)
	}
	waitGone(t, e.Pid())
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestBackPressure checks that a client that stops reading stalls the host
// process instead of making anything buffer its output, and that nothing is
// lost once it reads again.
func TestBackPressure(t *testing.T) {
	_, c := testServer(t, allowAll("/bin/sh"))
	const size = 64 << 20
	pr, pw := io.Pipe() // a reader that is not reading yet
	errOut := newLineWriter()
	e, err := c.Start(testContext(t), &Cmd{Path: "/bin/sh", Args: []string{"-c", fmt.Sprintf("head -c %d /dev/zero; echo done >&2", size)},
		Stdout: pw, Stderr: errOut})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-errOut.lines:
		t.Fatalf("process finished (%q) while nobody read its output: it was buffered somewhere", l)
	case <-time.After(time.Second):
	}
	n, err := io.Copy(io.Discard, io.LimitReader(pr, size))
	if err != nil || n != size {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	if l := errOut.next(t); l != "done" {
		t.Errorf("stderr %q", l)
	}
	go io.Copy(io.Discard, pr)
	if st, err := e.Wait(); err != nil || st.Code != 0 {
		t.Errorf("%+v %v", st, err)
	}
	pw.Close()
}
