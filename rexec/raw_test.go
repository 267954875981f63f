package rexec

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
)

// rawExec sends an exec request on conn and returns the Started reply.
func rawExec(conn net.Conn, path string, args ...string) (*rexecv1.Started, error) {
	req := &rexecv1.ExecRequest{ProtocolVersion: rexecv1.Version_VERSION_1, Path: path, Args: args}
	if err := writeFrame(conn, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Exec{Exec: req}}); err != nil {
		return nil, err
	}
	f, err := readServerFrame(conn)
	if err != nil {
		return nil, err
	}
	st, ok := f.Msg.(*rexecv1.ServerFrame_Started)
	if !ok {
		return nil, fmt.Errorf("reply %v", f)
	}
	return st.Started, nil
}

func readExit(t *testing.T, conn net.Conn) *rexecv1.Exit {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := readServerFrame(conn)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := f.Msg.(*rexecv1.ServerFrame_Exit)
	if !ok {
		t.Fatalf("got %v, want exit", f)
	}
	return e.Exit
}

// closedByServer reports whether the server closed conn (EOF) rather than
// leaving it open.
func closedByServer(conn net.Conn) bool {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := conn.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

func TestProtocolErrors(t *testing.T) {
	srv, err := NewServer(allowAll("/bin/sh"))
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
	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// Requests the server refuses with a reason.
	for _, req := range []*rexecv1.ExecRequest{
		{Path: "/bin/sh"}, // no protocol version
		{ProtocolVersion: rexecv1.Version_VERSION_1, Path: "/bin/sh", Env: []string{"NOEQUALS"}},
		{ProtocolVersion: rexecv1.Version_VERSION_1, Path: "/bin/sh", Env: []string{"=x"}},
		{ProtocolVersion: rexecv1.Version_VERSION_1, Path: "/bin/sh", Cwd: "relative"},
		{ProtocolVersion: rexecv1.Version_VERSION_1, Path: "/bin/sh", Args: []string{"a\x00b"}},
		{ProtocolVersion: rexecv1.Version_VERSION_1, Path: "/bin/sh", Tty: true, Window: &rexecv1.WindowSize{Rows: 1 << 20, Cols: 1}},
	} {
		c := dial()
		if err := writeFrame(c, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Exec{Exec: req}}); err != nil {
			t.Fatal(err)
		}
		if e := readExit(t, c); e.Code != ExitNotAllowed || !strings.Contains(e.Error, "invalid request") {
			t.Errorf("%v: %v", req, e)
		}
	}

	// Garbage, an oversized length, an empty frame and a control frame as
	// the first frame all just close the connection.
	for _, b := range [][]byte{
		{0xff, 0xff, 0xff, 0xff},
		{0, 0, 0, 2, 0xff, 0xff},
		{0, 0, 0, 0},
		frameBytes(t, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Keepalive{Keepalive: &rexecv1.Keepalive{}}}),
		frameBytes(t, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Attach{Attach: &rexecv1.Attach{Session: []byte("nope"), Stream: rexecv1.Stream_STREAM_STDOUT}}}),
	} {
		c := dial()
		c.Write(b)
		if !closedByServer(c) {
			t.Errorf("%x: connection left open", b)
		}
	}

	// A stream attached twice, or one the exec does not have, is refused;
	// the real one still works.
	ctrl := dial()
	st, err := rawExec(ctrl, "/bin/sh", "-c", "echo hi; sleep 0.2")
	if err != nil {
		t.Fatal(err)
	}
	attach := func(s rexecv1.Stream) net.Conn {
		c := dial()
		if err := writeFrame(c, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Attach{Attach: &rexecv1.Attach{Session: st.GetSession(), Stream: s}}}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := attach(rexecv1.Stream_STREAM_STDIN); !closedByServer(c) {
		t.Error("stdin attached to an exec without stdin")
	}
	out := attach(rexecv1.Stream_STREAM_STDOUT)
	b := make([]byte, 3)
	if _, err := io.ReadFull(out, b); err != nil || string(b) != "hi\n" { // attached for sure
		t.Fatalf("stdout %q %v", b, err)
	}
	if c := attach(rexecv1.Stream_STREAM_STDOUT); !closedByServer(c) {
		t.Error("stdout attached twice")
	}
	errc := attach(rexecv1.Stream_STREAM_STDERR)
	if rest, err := io.ReadAll(out); err != nil || len(rest) != 0 {
		t.Errorf("stdout after hi: %q %v", rest, err)
	}
	io.ReadAll(errc)
	if e := readExit(t, ctrl); e.Code != 0 {
		t.Errorf("exit %v", e)
	}
}
