package server

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// rawClient speaks the wire protocol directly, as a hostile client could.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	id uint64
}

func startServer(t *testing.T, exports ...Export) (string, *Server) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (file handles, chown)")
	}
	srv, err := New(Config{Exports: exports})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock, srv
}

func dialRaw(t *testing.T, sock, export string) (*rawClient, *qtfsv1.HelloReply) {
	return dialSession(t, sock, export, [16]byte{byte(time.Now().UnixNano())}, qtfsv1.FeatAll)
}

// dialSession opens a connection into session id offering features.
func dialSession(t *testing.T, sock, export string, id [16]byte, features uint64) (*rawClient, *qtfsv1.HelloReply) {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawClient{t: t, nc: nc}
	rep := c.call(&qtfsv1.Request{Op: qtfsv1.OpHello, Hello: qtfsv1.Hello{Magic: qtfsv1.Magic, Version: 1,
		Features: features, Session: id, Export: export}})
	if rep.Errno != 0 {
		t.Fatalf("hello: %v", syscall.Errno(rep.Errno))
	}
	return c, &rep.Hello
}

func (c *rawClient) call(req *qtfsv1.Request) *qtfsv1.Reply {
	c.t.Helper()
	c.id++
	return c.callID(req, c.id)
}

// send writes req under id without waiting for the reply.
func (c *rawClient) send(req *qtfsv1.Request, id uint64) {
	c.t.Helper()
	body, data, err := qtfsv1.EncodeRequest(nil, req)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := qtfsv1.WriteFrame(c.nc, qtfsv1.Header{Op: req.Op, ID: id}, body, data); err != nil {
		c.t.Fatal(err)
	}
}

// callID sends req under id and reads its reply.
func (c *rawClient) callID(req *qtfsv1.Request, id uint64) *qtfsv1.Reply {
	c.t.Helper()
	c.send(req, id)
	c.id = id
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, p, err := qtfsv1.ReadFrame(c.nc, make([]byte, qtfsv1.HeaderSize), nil)
	for err == nil && h.Flags&qtfsv1.FlagNotify != 0 { // host changes the test made
		h, p, err = qtfsv1.ReadFrame(c.nc, make([]byte, qtfsv1.HeaderSize), nil)
	}
	if err != nil {
		c.t.Fatalf("%s: %v", req.Op, err)
	}
	if h.ID != c.id || h.Op != req.Op {
		c.t.Fatalf("reply %+v for %s #%d", h, req.Op, c.id)
	}
	var rep qtfsv1.Reply
	if err := qtfsv1.DecodeReply(h.Op, p, &rep); err != nil {
		c.t.Fatal(err)
	}
	return &rep
}

func (c *rawClient) errno(req *qtfsv1.Request) syscall.Errno {
	return syscall.Errno(c.call(req).Errno)
}

// TestEscapeRefused: names that are not one component, symlinks, forged
// handles and devices never reach outside the export.
func TestEscapeRefused(t *testing.T) {
	base := t.TempDir()
	exp := filepath.Join(base, "export")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{exp + "/sub", outside} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644)
	os.Symlink(outside, filepath.Join(exp, "abs-link"))
	os.Symlink("../outside", filepath.Join(exp, "rel-link"))
	os.Symlink("/proc/self/root", filepath.Join(exp, "magic"))
	sock, _ := startServer(t, Export{Name: "e", Path: exp})
	c, hello := dialRaw(t, sock, "e")
	root := hello.Root.Node

	for _, name := range []string{"..", ".", "", "../outside", "sub/../../outside", "/etc", "a\x00b"} {
		for _, op := range []qtfsv1.Op{qtfsv1.OpLookup, qtfsv1.OpMkdir, qtfsv1.OpCreate, qtfsv1.OpUnlink, qtfsv1.OpMknod} {
			e := c.errno(&qtfsv1.Request{Op: op, Node: root, Name: name, Mode: unix.S_IFREG | 0o644, Flags: unix.O_RDWR})
			if e != syscall.EINVAL {
				t.Errorf("%s %q: %v, want EINVAL", op, name, e)
			}
		}
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpSymlink, Node: root, Name: name, Name2: "x"}); e != syscall.EINVAL {
			t.Errorf("symlink named %q: %v", name, e)
		}
	}
	// Symlinks are handed back as symlinks and never followed by the server.
	for _, l := range []string{"abs-link", "rel-link", "magic"} {
		rep := c.call(&qtfsv1.Request{Op: qtfsv1.OpLookup, Node: root, Name: l})
		if rep.Errno != 0 || rep.Entry.Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Fatalf("lookup %s: %v mode %o", l, syscall.Errno(rep.Errno), rep.Entry.Attr.Mode)
		}
		n := rep.Entry.Node
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpLookup, Node: n, Name: "secret"}); e != syscall.ENOTDIR {
			t.Errorf("lookup through %s: %v, want ENOTDIR", l, e)
		}
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpOpen, Node: n, Flags: unix.O_RDONLY}); e == 0 {
			t.Errorf("open of symlink %s succeeded", l)
		}
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpOpenDir, Node: n}); e == 0 {
			t.Errorf("opendir of symlink %s succeeded", l)
		}
		for _, op := range []qtfsv1.Op{qtfsv1.OpCreate, qtfsv1.OpMkdir} {
			if e := c.errno(&qtfsv1.Request{Op: op, Node: n, Name: "planted", Mode: 0o644, Flags: unix.O_RDWR}); e != syscall.ENOTDIR {
				t.Errorf("%s under symlink %s: %v", op, l, e)
			}
		}
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpRename, Node: root, Name: "sub", Node2: n, Name2: "moved"}); e != syscall.ENOTDIR {
			t.Errorf("rename into symlink %s: %v", l, e)
		}
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpSetAttr, Node: n, Valid: fattrSize, Len: 0}); e == 0 {
			t.Errorf("truncate through symlink %s succeeded", l)
		}
		// Times, owner and xattrs of a symlink node change the link itself,
		// never its target.
		c.errno(&qtfsv1.Request{Op: qtfsv1.OpSetAttr, Node: n, Valid: fattrAtime | fattrMtime | fattrUID,
			Atime: qtfsv1.Timespec{Sec: 5}, Mtime: qtfsv1.Timespec{Sec: 5}, Uid: 4321})
		c.errno(&qtfsv1.Request{Op: qtfsv1.OpSetXattr, Node: n, Name: "trusted.planted", Data: []byte("1")})
	}
	var st unix.Stat_t
	for _, p := range []string{outside, filepath.Join(outside, "secret")} {
		if err := unix.Stat(p, &st); err != nil || st.Mtim.Sec == 5 || st.Uid == 4321 {
			t.Errorf("%s changed through a symlink node: %+v %v", p, st, err)
		}
		if _, err := unix.Getxattr(p, "trusted.planted", make([]byte, 8)); err != unix.ENODATA {
			t.Errorf("%s got an xattr through a symlink node: %v", p, err)
		}
	}
	// Create over a symlink name does not follow it.
	if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpCreate, Node: root, Name: "abs-link", Mode: 0o644, Flags: unix.O_RDWR | unix.O_TRUNC}); e == 0 {
		t.Error("create over symlink succeeded")
	}
	// Forged handles.
	for _, id := range []uint64{0, 12345, 1 << 40, ^uint64(0)} {
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpGetAttr, Node: id}); e != syscall.ESTALE {
			t.Errorf("getattr of forged node %d: %v", id, e)
		}
		if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpRead, Fh: id, Len: 10}); e != syscall.EBADF {
			t.Errorf("read of forged fh %d: %v", id, e)
		}
	}
	// Devices are refused on an export without allow_devices.
	if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpMknod, Node: root, Name: "sda", Mode: unix.S_IFBLK | 0o600, Rdev: uint32(unix.Mkdev(8, 0))}); e != syscall.EPERM {
		t.Errorf("mknod block device: %v", e)
	}
	// A hard link needs a node the client holds: there is no way to name the outside file.
	if e := c.errno(&qtfsv1.Request{Op: qtfsv1.OpLink, Node: root, Node2: root, Name: "rootlink"}); e != syscall.EPERM {
		t.Errorf("link of a directory: %v", e)
	}

	ents, _ := os.ReadDir(outside)
	if len(ents) != 1 {
		t.Fatalf("outside directory changed: %v", ents)
	}
	if _, err := os.Lstat(filepath.Join(exp, "planted")); err == nil {
		t.Fatal("planted file exists")
	}
}

// TestMalformedFramesCloseOnlyThatConnection: garbage gets an error and the
// connection is closed; other clients keep working.
func TestMalformedFramesCloseOnlyThatConnection(t *testing.T) {
	exp := t.TempDir()
	os.WriteFile(filepath.Join(exp, "f"), []byte("x"), 0o644)
	sock, _ := startServer(t, Export{Name: "e", Path: exp})
	good, hello := dialRaw(t, sock, "e")

	cases := map[string][]byte{}
	hdr := make([]byte, qtfsv1.HeaderSize)
	qtfsv1.Header{Len: qtfsv1.MaxPayload + 1, Op: qtfsv1.OpWrite, ID: 9}.Put(hdr)
	cases["oversized"] = append([]byte(nil), hdr...)
	qtfsv1.Header{Len: 3, Op: qtfsv1.OpLookup, ID: 9}.Put(hdr)
	cases["short lookup"] = append(append([]byte(nil), hdr...), 1, 2, 3)
	qtfsv1.Header{Len: 0, Op: 999, ID: 9}.Put(hdr)
	cases["unknown op"] = append([]byte(nil), hdr...)
	qtfsv1.Header{Len: 0, Op: qtfsv1.OpPing, Flags: qtfsv1.FlagReply, ID: 9}.Put(hdr)
	cases["reply from client"] = append([]byte(nil), hdr...)

	for name, frame := range cases {
		bad, _ := dialRaw(t, sock, "e")
		bad.nc.Write(frame)
		bad.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		h, p, err := qtfsv1.ReadFrame(bad.nc, make([]byte, qtfsv1.HeaderSize), nil)
		if err != nil {
			t.Fatalf("%s: no error reply: %v", name, err)
		}
		var rep qtfsv1.Reply
		if err := qtfsv1.DecodeReply(h.Op, p, &rep); err != nil || syscall.Errno(rep.Errno) != syscall.EPROTO || h.ID != 9 {
			t.Fatalf("%s: reply %+v %v errno %d", name, h, err, rep.Errno)
		}
		if _, _, err := qtfsv1.ReadFrame(bad.nc, make([]byte, qtfsv1.HeaderSize), nil); err == nil {
			t.Fatalf("%s: connection not closed", name)
		}
		if e := good.errno(&qtfsv1.Request{Op: qtfsv1.OpLookup, Node: hello.Root.Node, Name: "f"}); e != 0 {
			t.Fatalf("%s: other connection broken: %v", name, e)
		}
	}
	// Handshake errors.
	nc, _ := net.Dial("unix", sock)
	defer nc.Close()
	body, _, _ := qtfsv1.EncodeRequest(nil, &qtfsv1.Request{Op: qtfsv1.OpHello, Hello: qtfsv1.Hello{Magic: qtfsv1.Magic, Version: 1, Export: "nope"}})
	qtfsv1.WriteFrame(nc, qtfsv1.Header{Op: qtfsv1.OpHello}, body, nil)
	h, p, err := qtfsv1.ReadFrame(nc, make([]byte, qtfsv1.HeaderSize), nil)
	var rep qtfsv1.Reply
	if err != nil || qtfsv1.DecodeReply(h.Op, p, &rep) != nil || syscall.Errno(rep.Errno) != syscall.ENOENT {
		t.Fatalf("unknown export: %v %d", err, rep.Errno)
	}
}

// TestReadWriteWire checks data integrity through the raw protocol.
func TestReadWriteWire(t *testing.T) {
	exp := t.TempDir()
	sock, _ := startServer(t, Export{Name: "e", Path: exp})
	c, hello := dialRaw(t, sock, "e")
	rep := c.call(&qtfsv1.Request{Op: qtfsv1.OpCreate, Node: hello.Root.Node, Name: "f", Flags: unix.O_RDWR, Mode: 0o640})
	if rep.Errno != 0 {
		t.Fatal(syscall.Errno(rep.Errno))
	}
	data := bytes.Repeat([]byte{7}, qtfsv1.MaxData)
	if r := c.call(&qtfsv1.Request{Op: qtfsv1.OpWrite, Fh: rep.Fh, Off: 10, Data: data}); r.Errno != 0 || r.N != uint64(len(data)) {
		t.Fatalf("write: %+v", r)
	}
	r := c.call(&qtfsv1.Request{Op: qtfsv1.OpRead, Fh: rep.Fh, Off: 10, Len: qtfsv1.MaxData + 100})
	if r.Errno != 0 || !bytes.Equal(r.Data, data) {
		t.Fatalf("read back %d bytes, errno %d", len(r.Data), r.Errno)
	}
	st, _ := os.Stat(filepath.Join(exp, "f"))
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode())
	}
}
