package shim

import (
	"bytes"
	"encoding/binary"
	"net/url"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

func TestParseStdio(t *testing.T) {
	type streams struct{ in, out, err bool }
	for name, tc := range map[string]struct {
		spec    stdioSpec
		kind    string
		streams streams
		out     string
	}{
		"null":          {stdioSpec{}, stdioNull, streams{}, ""},
		"ctr fifos":     {stdioSpec{Stdin: "/run/c/in", Stdout: "/run/c/out", Stderr: "/run/c/err"}, stdioFIFO, streams{true, true, true}, "/run/c/out"},
		"fifo scheme":   {stdioSpec{Stdout: "fifo:///run/c/out"}, stdioFIFO, streams{false, true, false}, "/run/c/out"},
		"stderr only":   {stdioSpec{Stderr: "/run/c/err"}, stdioFIFO, streams{false, false, true}, ""},
		"stdin only":    {stdioSpec{Stdin: "/run/c/in"}, stdioFIFO, streams{true, false, false}, ""},
		"terminal":      {stdioSpec{Stdin: "/run/c/in", Stdout: "/run/c/out", Terminal: true}, stdioFIFO, streams{true, true, false}, "/run/c/out"},
		"terminal+err":  {stdioSpec{Stdout: "/run/c/out", Stderr: "/run/c/err", Terminal: true}, stdioFIFO, streams{false, true, false}, "/run/c/out"},
		"binary":        {stdioSpec{Stdout: "binary:///usr/bin/logger?a=b", Stderr: "binary:///usr/bin/logger?a=b"}, stdioBinary, streams{false, true, true}, ""},
		"binary-v2":     {stdioSpec{Stdout: "binary-v2:///usr/bin/logger", Stderr: "binary-v2:///usr/bin/logger"}, stdioBinaryV2, streams{false, true, true}, ""},
		"binary+stdin":  {stdioSpec{Stdin: "/run/c/in", Stdout: "binary:///l"}, stdioBinary, streams{true, true, true}, ""},
		"file":          {stdioSpec{Stdout: "file:///var/log/c.log", Stderr: "file:///var/log/c.log"}, stdioFile, streams{false, true, true}, ""},
		"file terminal": {stdioSpec{Stdout: "file:///var/log/c.log", Terminal: true}, stdioFile, streams{false, true, false}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := parseStdio(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if got.kind != tc.kind {
				t.Errorf("kind %q, want %q", got.kind, tc.kind)
			}
			in, out, e := got.streams()
			if (streams{in, out, e}) != tc.streams {
				t.Errorf("streams %v, want %v", streams{in, out, e}, tc.streams)
			}
			if got.stdout != tc.out {
				t.Errorf("stdout path %q, want %q", got.stdout, tc.out)
			}
		})
	}
}

func TestParseStdioErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		spec stdioSpec
		is   func(error) bool
	}{
		"relative fifo":    {stdioSpec{Stdout: "out"}, errdefs.IsInvalidArgument},
		"relative stdin":   {stdioSpec{Stdin: "in"}, errdefs.IsInvalidArgument},
		"unknown scheme":   {stdioSpec{Stdout: "npipe://x"}, errdefs.IsNotImplemented},
		"binary no path":   {stdioSpec{Stdout: "binary://"}, errdefs.IsInvalidArgument},
		"binary relative":  {stdioSpec{Stdout: "binary://logger"}, errdefs.IsInvalidArgument},
		"file no path":     {stdioSpec{Stdout: "file://"}, errdefs.IsInvalidArgument},
		"mixed schemes":    {stdioSpec{Stdout: "/run/out", Stderr: "file:///x"}, errdefs.IsInvalidArgument},
		"bad uri escaping": {stdioSpec{Stdout: "binary:///%zz"}, errdefs.IsInvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseStdio(tc.spec)
			if err == nil || !tc.is(err) {
				t.Errorf("error %v", err)
			}
		})
	}
}

func TestLoggerCmd(t *testing.T) {
	u, err := url.Parse("binary:///usr/local/bin/log-driver?id=abc&verbose")
	if err != nil {
		t.Fatal(err)
	}
	cmd := loggerCmd(u, "k8s.io", "c1")
	if cmd.Path != "/usr/local/bin/log-driver" {
		t.Errorf("path %q", cmd.Path)
	}
	args := map[string]bool{}
	for _, a := range cmd.Args[1:] {
		args[a] = true
	}
	if !args["id"] || !args["abc"] || !args["verbose"] || len(cmd.Args) != 5 { // a key without value gets "" (as containerd's NewBinaryCmd)
		t.Errorf("args %q", cmd.Args)
	}
	env := map[string]bool{}
	for _, e := range cmd.Env {
		env[e] = true
	}
	if !env["CONTAINER_ID=c1"] || !env["CONTAINER_NAMESPACE=k8s.io"] {
		t.Errorf("env %q", cmd.Env)
	}
}

func TestAttachFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	att := &runtimev1.StdioAttach{Process: &runtimev1.ProcessRef{Namespace: "default", ContainerId: "c1", ExecId: "e1"}, Stream: runtimev1.StdioStream_STDERR}
	if err := writeFrame(&buf, att); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("raw bytes follow")
	var got runtimev1.StdioAttach
	if err := readFrame(&buf, &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, att) {
		t.Errorf("got %v", &got)
	}
	if buf.String() != "raw bytes follow" {
		t.Errorf("readFrame consumed stream bytes: %q left", buf.String())
	}
	// Oversized frames are refused both ways.
	big := &runtimev1.StdioAttach{Process: &runtimev1.ProcessRef{ContainerId: string(make([]byte, maxAttachFrame))}}
	if err := writeFrame(&buf, big); err == nil {
		t.Error("oversized frame written")
	}
	hdr := binary.BigEndian.AppendUint32(nil, maxAttachFrame+1)
	if err := readFrame(bytes.NewReader(hdr), &got); err == nil {
		t.Error("oversized frame read")
	}
	// An agent refusal is an error carrying its text.
	buf.Reset()
	writeFrame(&buf, &runtimev1.StdioAttachResponse{Error: "no such process"})
	if err := readAttachResponse(&buf); err == nil || !bytes.Contains([]byte(err.Error()), []byte("no such process")) {
		t.Errorf("refusal: %v", err)
	}
}

// FuzzReadAttachResponse feeds arbitrary bytes from "the agent" to the
// decoder of the stdio attach answer: it must return (nil or an error),
// never panic, hang or read past the frame.
func FuzzReadAttachResponse(f *testing.F) {
	ok := binary.BigEndian.AppendUint32(nil, 0)
	f.Add(ok)
	var b bytes.Buffer
	writeFrame(&b, &runtimev1.StdioAttachResponse{Error: "refused"})
	f.Add(b.Bytes())
	f.Add([]byte{0, 0, 0x10, 0x01})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3})
	f.Add([]byte{0, 0, 0, 3, 0x0a, 0x05, 'x'})
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		err := readAttachResponse(r)
		consumed := len(data) - r.Len()
		if err == nil {
			n := int(binary.BigEndian.Uint32(data))
			if consumed != 4+n {
				t.Fatalf("consumed %d bytes of a %d-byte frame", consumed, 4+n)
			}
		}
		if consumed > 4+maxAttachFrame {
			t.Fatalf("read %d bytes, past any frame", consumed)
		}
	})
}

// FuzzDecodeAgentEvent feeds arbitrary payloads "from the agent" to the event
// decoder: an error or a TaskExit/TaskOOM naming a container, never a panic.
func FuzzDecodeAgentEvent(f *testing.F) {
	exit, _ := typeurl.MarshalAnyToProto(&eventstypes.TaskExit{ContainerID: "c1", ID: "c1", Pid: 7, ExitStatus: 137})
	oom, _ := typeurl.MarshalAnyToProto(&eventstypes.TaskOOM{ContainerID: "c1"})
	start, _ := typeurl.MarshalAnyToProto(&eventstypes.TaskStart{ContainerID: "c1"})
	f.Add("/tasks/exit", exit.TypeUrl, exit.Value)
	f.Add("/tasks/oom", oom.TypeUrl, oom.Value)
	f.Add("/tasks/start", start.TypeUrl, start.Value)
	f.Add("/tasks/oom", exit.TypeUrl, exit.Value)
	f.Add("/tasks/exit", exit.TypeUrl, []byte{0x0a, 0xff, 0x01})
	f.Add("", "", []byte(nil))
	f.Fuzz(func(t *testing.T, topic, typeURL string, value []byte) {
		ev := &runtimev1.Event{Topic: topic, Event: &anypb.Any{TypeUrl: typeURL, Value: value}}
		v, id, err := decodeAgentEvent(ev)
		if err != nil {
			return
		}
		if id == "" {
			t.Fatal("accepted an event without container id")
		}
		switch v.(type) {
		case *eventstypes.TaskExit, *eventstypes.TaskOOM:
		default:
			t.Fatalf("accepted %T", v)
		}
	})
}
