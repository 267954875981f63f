package rexec

import (
	"bytes"
	"encoding/binary"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
)

func frameBytes(t testing.TB, m proto.Message) []byte {
	var b bytes.Buffer
	if err := writeFrame(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func clientSeeds(t testing.TB) [][]byte {
	exec := &rexecv1.ExecRequest{ProtocolVersion: rexecv1.Version_VERSION_1, Path: "/bin/sh", Args: []string{"-c", "exit 3"},
		Env: []string{"A=1"}, Cwd: "/tmp", Stdin: true, Tty: true, Window: &rexecv1.WindowSize{Rows: 24, Cols: 80}, TimeoutMs: 1000}
	return [][]byte{
		frameBytes(t, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Exec{Exec: exec}}),
		frameBytes(t, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Attach{Attach: &rexecv1.Attach{Session: make([]byte, 32), Stream: rexecv1.Stream_STREAM_STDOUT}}}),
		frameBytes(t, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Signal{Signal: &rexecv1.Signal{Name: "TERM"}}}),
		frameBytes(t, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Resize{Resize: &rexecv1.Resize{Window: &rexecv1.WindowSize{Rows: 1, Cols: 2}}}}),
		frameBytes(t, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Keepalive{Keepalive: &rexecv1.Keepalive{}}}),
		{0, 0, 0, 0},
		{0xff, 0xff, 0xff, 0xff},
		{0, 0, 0, 3, 0x0a, 0x01},
	}
}

// FuzzReadClientFrame feeds arbitrary bytes to the server's frame decoder
// and the request validation behind it: errors are fine, panics, hangs and
// reading past the frame are not.
func FuzzReadClientFrame(f *testing.F) {
	for _, s := range clientSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		fr, err := readClientFrame(r)
		if err != nil {
			return
		}
		if len(data) < 4 {
			t.Fatal("decoded a frame from fewer than 4 bytes")
		}
		if n := binary.BigEndian.Uint32(data); int(n) != len(data)-4-r.Len() {
			t.Fatalf("consumed %d body bytes, frame says %d", len(data)-4-r.Len(), n)
		}
		if m, ok := fr.Msg.(*rexecv1.ClientFrame_Exec); ok {
			_ = validateExec(m.Exec)
		}
		if m, ok := fr.Msg.(*rexecv1.ClientFrame_Signal); ok {
			_, _ = parseSignal(m.Signal.GetName())
		}
	})
}

// FuzzReadServerFrame does the same for the client's decoder.
func FuzzReadServerFrame(f *testing.F) {
	for _, m := range []*rexecv1.ServerFrame{
		{Msg: &rexecv1.ServerFrame_Started{Started: &rexecv1.Started{Session: make([]byte, 32), Pid: 42}}},
		{Msg: &rexecv1.ServerFrame_Exit{Exit: &rexecv1.Exit{Code: 137, Signal: "KILL", TimedOut: true, Error: "x"}}},
		{Msg: &rexecv1.ServerFrame_Keepalive{Keepalive: &rexecv1.Keepalive{}}},
	} {
		f.Add(frameBytes(f, m))
	}
	f.Add([]byte{0, 0, 0, 1})
	f.Add([]byte{0x00, 0x10, 0x00, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		if _, err := readServerFrame(r); err != nil {
			return
		}
		if n := binary.BigEndian.Uint32(data); int(n) != len(data)-4-r.Len() {
			t.Fatalf("consumed %d body bytes, frame says %d", len(data)-4-r.Len(), n)
		}
	})
}

// FuzzAllowlistCheck checks that arbitrary paths and arguments (NUL
// separated) never panic the allowlist and that whatever passes resolves to
// an allowed binary with allowed arguments.
func FuzzAllowlistCheck(f *testing.F) {
	a, err := newAllowlist([]AllowRule{
		{Path: "/bin/true"},
		{Path: "/bin/sh", Args: []string{"-c", "exit [0-9]"}, Variadic: true},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("/bin/true", "")
	f.Add("/bin/sh", "-c\x00exit 1")
	f.Add("/bin/../usr/bin/env", "")
	f.Add("relative", "x")
	f.Add("/bin/sh\x00", "")
	f.Fuzz(func(t *testing.T, path, args string) {
		var argv []string
		if args != "" {
			argv = strings.Split(args, "\x00")
		}
		ok, err := a.check(path, argv)
		if err != nil {
			return
		}
		switch ok.resolved {
		case "/usr/bin/true":
		case "/usr/bin/dash":
			// Variadic: the last pattern covers zero or more arguments.
			if len(argv) < 1 || argv[0] != "-c" || (len(argv) > 1 && !regexp.MustCompile(`^exit [0-9]$`).MatchString(argv[1])) {
				t.Fatalf("sh allowed with %q", argv)
			}
		default:
			t.Fatalf("%q allowed as %q", path, ok.resolved)
		}
	})
}
