// Package testlayer builds image layer blobs and describes extracted trees
// for the tests of both ends of the unpack channel (plugin on the host,
// shim/differ on the DPU). It is imported by tests only.
package testlayer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// Layer is a test blob as it sits in a content store.
type Layer struct {
	Blob   []byte
	Desc   ocispec.Descriptor
	DiffID digest.Digest // of the uncompressed tar
}

// Entry is one tar entry and its body.
type Entry struct {
	Hdr  tar.Header
	Body string
}

// Dir is a directory entry owned by uid:uid.
func Dir(name string, mode int64, uid int) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: uid}}
}

// File is a regular file entry owned by uid:uid.
func File(name, body string, mode int64, uid int) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: uid}, Body: body}
}

// Make writes entries as a PAX tar, gzip-compressed when gz.
func Make(t testing.TB, entries []Entry, gz bool) Layer {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, e := range entries {
		h := e.Hdr
		h.Size = int64(len(e.Body))
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.Body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	l := Layer{DiffID: digest.FromBytes(tb.Bytes()), Blob: tb.Bytes()}
	mt := ocispec.MediaTypeImageLayer
	if gz {
		var gb bytes.Buffer
		zw := gzip.NewWriter(&gb)
		zw.Write(tb.Bytes())
		zw.Close()
		l.Blob, mt = gb.Bytes(), ocispec.MediaTypeImageLayerGzip
	}
	l.Desc = ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(l.Blob), Size: int64(len(l.Blob))}
	return l
}

// Pair is two layers exercising what image layers hold: modes incl.
// setuid and sticky, owners, hard links, symlinks, fifos, xattrs, a
// directory the second tar does not list (its attributes come from the
// first layer), and in the second layer a whiteout and an opaque directory.
func Pair(t testing.TB) (Layer, Layer) {
	suid := File("bin/su", "setuid", 0o4755, 0)
	xattr := File("etc/cap", "x", 0o644, 0)
	xattr.Hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.test": "value", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}
	l1 := Make(t, []Entry{
		Dir("bin", 0o755, 0), suid,
		Dir("etc", 0o755, 0), File("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644, 0), xattr,
		Dir("home", 0o755, 0), Dir("home/user", 0o700, 1000), File("home/user/.profile", "export A=1\n", 0o600, 1000),
		Dir("tmp", 0o1777, 0),
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox"}},
		File("bin/busybox", strings.Repeat("busybox ", 4096), 0o755, 0),
		{Hdr: tar.Header{Typeflag: tar.TypeLink, Name: "bin/ls", Linkname: "bin/busybox"}},
		{Hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "tmp/fifo", Mode: 0o600}},
		Dir("var", 0o711, 0), Dir("var/lib", 0o750, 0), File("var/lib/old", "old", 0o644, 0),
		Dir("opt", 0o755, 0), Dir("opt/app", 0o755, 0), File("opt/app/a", "a", 0o644, 0), File("opt/app/b", "b", 0o644, 0),
	}, true)
	l2 := Make(t, []Entry{
		File("etc/.wh.passwd", "", 0o644, 0),
		File("opt/app/.wh..wh..opq", "", 0o644, 0), File("opt/app/c", "c", 0o644, 0),
		File("var/lib/new/file", "new", 0o640, 1000), // var/lib/new and var/lib not in this tar
		File("home/user/.profile", "export A=2\n", 0o600, 1000),
	}, true)
	return l1, l2
}

// Tree describes every entry beneath root: type, mode, owner, size, content
// digest, link count, link target, device, xattrs and (below root) mtime.
func Tree(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d", st.Mode, st.Uid, st.Gid)
		if rel != "." {
			desc += fmt.Sprintf(" mtime=%d", st.Mtim.Sec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" size=%d sha=%x nlink=%d", len(b), sha256.Sum256(b), st.Nlink)
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			buf := make([]byte, 4096)
			n, _ := unix.Llistxattr(p, buf)
			var names []string
			for _, x := range strings.Split(string(buf[:max(n, 0)]), "\x00") {
				if x != "" {
					names = append(names, x)
				}
			}
			sort.Strings(names)
			for _, x := range names {
				v := make([]byte, 4096)
				vn, _ := unix.Lgetxattr(p, x, v)
				desc += fmt.Sprintf(" %s=%q", x, v[:max(vn, 0)])
			}
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// DiffTrees reports every difference between two Tree results.
func DiffTrees(t testing.TB, what string, got, want map[string]string) {
	t.Helper()
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s: %s missing", what, p)
		} else if g != w {
			t.Errorf("%s: %s:\n got  %s\n want %s", what, p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unexpected %s", what, p)
		}
	}
	if len(want) < 2 {
		t.Errorf("%s: the reference tree is empty", what)
	}
}
