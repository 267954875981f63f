package escape

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// entry is what the host-side check remembers about one path: anything an
// escaped write, chmod, chown, utimes, truncate, xattr, link or rename
// would change. atime is left out (reads through a bind or a buggy server
// may touch it legitimately).
type entry struct {
	typ    string
	mode   uint32
	uid    uint32
	gid    uint32
	size   int64
	nlink  uint64
	mtime  unix.Timespec
	ctime  unix.Timespec
	sum    [32]byte // regular files
	link   string   // symlinks
	xattrs string   // sorted name=value list
}

// snapshot is a recursive record of a host directory, by relative path.
type snapshot map[string]entry

// takeSnapshot walks dir natively without following symlinks.
func takeSnapshot(dir string) (snapshot, error) {
	snap := snapshot{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		e := entry{
			typ: typeName(st.Mode), mode: st.Mode & 0o7777, uid: st.Uid, gid: st.Gid,
			size: st.Size, nlink: st.Nlink, mtime: st.Mtim, ctime: st.Ctim,
			xattrs: xattrString(p),
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
			e.sum = sha256.Sum256(b)
		case unix.S_IFLNK:
			e.link, _ = os.Readlink(p)
		}
		snap[rel] = e
		return nil
	})
	return snap, err
}

func xattrString(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var kv []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			kv = append(kv, name+"=<"+err.Error()+">")
			continue
		}
		kv = append(kv, fmt.Sprintf("%s=%q", name, v[:vn]))
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func typeName(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("type %o", m&unix.S_IFMT)
}

// diff lists every change from a to b in readable form, sorted.
func (a snapshot) diff(b snapshot, label string) []string {
	var out []string
	for p, ea := range a {
		eb, ok := b[p]
		if !ok {
			out = append(out, fmt.Sprintf("%s/%s: removed (was %s)", label, p, ea.typ))
			continue
		}
		var ch []string
		if ea.typ != eb.typ {
			ch = append(ch, fmt.Sprintf("type %s -> %s", ea.typ, eb.typ))
		}
		if ea.mode != eb.mode {
			ch = append(ch, fmt.Sprintf("mode %04o -> %04o", ea.mode, eb.mode))
		}
		if ea.uid != eb.uid || ea.gid != eb.gid {
			ch = append(ch, fmt.Sprintf("owner %d:%d -> %d:%d", ea.uid, ea.gid, eb.uid, eb.gid))
		}
		if ea.size != eb.size {
			ch = append(ch, fmt.Sprintf("size %d -> %d", ea.size, eb.size))
		}
		if ea.sum != eb.sum {
			ch = append(ch, "content changed")
		}
		if ea.nlink != eb.nlink && ea.typ != "dir" {
			ch = append(ch, fmt.Sprintf("nlink %d -> %d", ea.nlink, eb.nlink))
		}
		if ea.link != eb.link {
			ch = append(ch, fmt.Sprintf("symlink target %q -> %q", ea.link, eb.link))
		}
		if ea.xattrs != eb.xattrs {
			ch = append(ch, fmt.Sprintf("xattrs [%s] -> [%s]", ea.xattrs, eb.xattrs))
		}
		if ea.mtime != eb.mtime {
			ch = append(ch, "mtime changed")
		}
		if ea.ctime != eb.ctime {
			ch = append(ch, "ctime changed")
		}
		if len(ch) > 0 {
			out = append(out, fmt.Sprintf("%s/%s: %s", label, p, strings.Join(ch, ", ")))
		}
	}
	for p, eb := range b {
		if _, ok := a[p]; !ok {
			out = append(out, fmt.Sprintf("%s/%s: appeared (%s)", label, p, eb.typ))
		}
	}
	sort.Strings(out)
	return out
}
