package server

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// TestReplay: with FeatReplay, a request sent again under its ID — on
// another connection of the session, as after a link drop — gets the reply
// of its first execution and is not executed again. Without the feature (a
// client from before it) the server executes every request it receives.
func TestReplay(t *testing.T) {
	exp := t.TempDir()
	sock, _ := startServer(t, Export{Name: "e", Path: exp})
	sess := [16]byte{'r', 'e', 'p', 'l', 'a', 'y'}
	a, hello := dialSession(t, sock, "e", sess, qtfsv1.FeatAll)
	if hello.Features&qtfsv1.FeatReplay == 0 {
		t.Fatal("FeatReplay not granted")
	}
	root := hello.Root.Node
	create := &qtfsv1.Request{Op: qtfsv1.OpCreate, Node: root, Name: "f", Flags: unix.O_CREAT | unix.O_EXCL | unix.O_RDWR, Mode: 0o644}
	first := a.callID(create, 1000)
	if first.Errno != 0 {
		t.Fatalf("create: %v", syscall.Errno(first.Errno))
	}
	// The reply was lost with the link: the client asks again elsewhere.
	b, _ := dialSession(t, sock, "e", sess, qtfsv1.FeatAll)
	again := b.callID(create, 1000)
	if again.Errno != 0 || again.Fh != first.Fh || again.Entry.Node != first.Entry.Node {
		t.Fatalf("create resent: errno %v fh %d node %d, want the first reply (fh %d node %d)",
			syscall.Errno(again.Errno), again.Fh, again.Entry.Node, first.Fh, first.Entry.Node)
	}
	// A new request under a new ID is executed.
	if e := b.errno(create); e != syscall.EEXIST {
		t.Fatalf("create under a new ID: %v, want EEXIST", e)
	}
	unlink := &qtfsv1.Request{Op: qtfsv1.OpUnlink, Node: root, Name: "f"}
	for i := 0; i < 2; i++ {
		if rep := b.callID(unlink, 2000); rep.Errno != 0 {
			t.Fatalf("unlink, attempt %d: %v", i+1, syscall.Errno(rep.Errno))
		}
	}
	// An ID of another request is a client bug: EPROTO, the connection stays.
	if rep := b.callID(&qtfsv1.Request{Op: qtfsv1.OpMkdir, Node: root, Name: "d", Mode: 0o755}, 2000); rep.Errno != uint32(syscall.EPROTO) {
		t.Fatalf("mkdir under the ID of an unlink: %v, want EPROTO", syscall.Errno(rep.Errno))
	}
	if _, err := os.Stat(filepath.Join(exp, "d")); !os.IsNotExist(err) {
		t.Fatalf("mkdir under a reused ID was executed: %v", err)
	}
	// Requests that are safe to repeat are not remembered.
	getattr := &qtfsv1.Request{Op: qtfsv1.OpGetAttr, Node: root}
	b.callID(getattr, 3000)
	os.Chmod(exp, 0o711)
	if rep := b.callID(getattr, 3000); rep.Errno != 0 || rep.Attr.Mode&0o777 != 0o711 {
		t.Fatalf("getattr under a repeated ID: %v mode %o, want a fresh answer", syscall.Errno(rep.Errno), rep.Attr.Mode)
	}

	// An old client: no replay, a repeated ID is executed again.
	old, hello := dialSession(t, sock, "e", [16]byte{'o', 'l', 'd'}, qtfsv1.FeatAll&^qtfsv1.FeatReplay)
	if hello.Features&qtfsv1.FeatReplay != 0 {
		t.Fatal("FeatReplay granted to a client that did not offer it")
	}
	mkdir := &qtfsv1.Request{Op: qtfsv1.OpMkdir, Node: hello.Root.Node, Name: "old", Mode: 0o755}
	if e := old.callID(mkdir, 7).Errno; e != 0 {
		t.Fatalf("mkdir: %v", syscall.Errno(e))
	}
	if e := old.callID(mkdir, 7).Errno; e != uint32(syscall.EEXIST) {
		t.Fatalf("mkdir repeated without FeatReplay: %v, want EEXIST (executed again)", syscall.Errno(e))
	}
}

// TestReplayOvertaken: the resend can reach the server before, or while, its
// original is executed (the original may still sit unread in a dead
// connection's buffer); either way the request runs once and both get its
// reply.
func TestReplayOvertaken(t *testing.T) {
	var rc replayCache
	e, dup := rc.begin(5, qtfsv1.OpRename)
	if dup {
		t.Fatal("first sight of an ID is a duplicate")
	}
	d, dup := rc.begin(5, qtfsv1.OpRename)
	if !dup || d != e {
		t.Fatal("second sight of an ID is not the first's entry")
	}
	got := make(chan []byte)
	go func() { <-d.done; got <- d.payload }()
	select {
	case <-got:
		t.Fatal("duplicate answered before the first execution finished")
	case <-time.After(20 * time.Millisecond):
	}
	e.finish([]byte{0, 0, 0, 0}, nil)
	if p := <-got; len(p) != 4 {
		t.Fatalf("duplicate got %v", p)
	}

	// Bounded: the oldest IDs are forgotten first.
	for id := uint64(100); id < 100+replayMax; id++ {
		rc.begin(id, qtfsv1.OpMkdir)
	}
	if _, dup := rc.begin(5, qtfsv1.OpRename); dup {
		t.Fatal("oldest ID still remembered past the bound")
	}
	if _, dup := rc.begin(100+replayMax-1, qtfsv1.OpMkdir); !dup {
		t.Fatal("latest ID forgotten")
	}
	if len(rc.m) > replayMax {
		t.Fatalf("%d replies remembered, bound %d", len(rc.m), replayMax)
	}
}
