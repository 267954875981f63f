package posix

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// statString is the normalised stat of a path: type, permission bits
// (incl. setuid/setgid/sticky), owner, size for regular files and symlinks,
// link count, and rdev for device nodes. No inode, dev, blocks or times.
func statString(path string, follow bool) string {
	var st unix.Stat_t
	var err error
	if follow {
		err = unix.Stat(path, &st)
	} else {
		err = unix.Lstat(path, &st)
	}
	if err != nil {
		return errName(err)
	}
	return fmtStat(&st)
}

func fmtStat(st *unix.Stat_t) string {
	s := fmt.Sprintf("%s mode=%04o uid=%d gid=%d", typeName(st.Mode), st.Mode&0o7777, st.Uid, st.Gid)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFLNK:
		s += fmt.Sprintf(" size=%d", st.Size)
	case unix.S_IFCHR, unix.S_IFBLK:
		s += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		// Directory link counts are file-system specific (btrfs keeps 1);
		// cases that care record them explicitly.
		s += fmt.Sprintf(" nlink=%d", st.Nlink)
	}
	return s
}

func typeName(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "reg"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "lnk"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "sock"
	case unix.S_IFCHR:
		return "chr"
	case unix.S_IFBLK:
		return "blk"
	}
	return fmt.Sprintf("type(%o)", m&unix.S_IFMT)
}

func dtName(t uint8) string {
	switch t {
	case unix.DT_REG:
		return "reg"
	case unix.DT_DIR:
		return "dir"
	case unix.DT_LNK:
		return "lnk"
	case unix.DT_FIFO:
		return "fifo"
	case unix.DT_SOCK:
		return "sock"
	case unix.DT_CHR:
		return "chr"
	case unix.DT_BLK:
		return "blk"
	case unix.DT_UNKNOWN:
		return "unknown"
	}
	return fmt.Sprint(t)
}

// dirent is one entry from getdents64.
type dirent struct {
	name string
	typ  uint8
}

// parseDirents decodes a getdents64 buffer, keeping "." and "..".
func parseDirents(buf []byte) []dirent {
	var out []dirent
	for len(buf) >= 19 {
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < 19 || reclen > len(buf) {
			break
		}
		typ := buf[18]
		name := buf[19:reclen]
		if i := strings.IndexByte(string(name), 0); i >= 0 {
			name = name[:i]
		}
		out = append(out, dirent{string(name), typ})
		buf = buf[reclen:]
	}
	return out
}

// readDirFd reads a directory fd to its end with a buffer of bufSize.
func readDirFd(fd int, bufSize int) ([]dirent, error) {
	var all []dirent
	buf := make([]byte, bufSize)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return all, err
		}
		if n == 0 {
			return all, nil
		}
		all = append(all, parseDirents(buf[:n])...)
	}
}

// dirListing is "name:type" for every entry, sorted, including . and ..
func dirListing(path string) string {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return errName(err)
	}
	defer unix.Close(fd)
	ents, err := readDirFd(fd, 8192)
	if err != nil {
		return errName(err)
	}
	var s []string
	for _, e := range ents {
		s = append(s, e.name+":"+dtName(e.typ))
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func dirNames(path string) ([]string, error) {
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// content summarises bytes: short ones verbatim, long ones by size and hash.
func content(b []byte) string {
	if len(b) <= 64 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("len=%d sha256=%x", len(b), sha256.Sum256(b))
}

// readContent reads a whole file and summarises it.
func readContent(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return errName(err)
	}
	return content(b)
}

// pattern returns n deterministic, non-repeating-looking bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// rel makes a path relative to the case directory for step labels.
func (r *rec) rel(p string) string {
	if p == "" {
		return ""
	}
	if rel, err := filepath.Rel(r.dir, p); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return "<outside>"
}

// host returns the native view of a case path when Options.HostDir is set,
// else the path itself, so reference and mount runs record the same steps.
func (r *rec) host(names ...string) string {
	if r.hostDir == "" {
		return r.p(names...)
	}
	return filepath.Join(append([]string{r.hostDir}, names...)...)
}

// stat records the normalised lstat of a case path.
func (r *rec) stat(name string) {
	r.add("lstat "+name, statString(r.p(name), false))
}

// mustWrite creates name with data (mode 0644), recording failures only.
func (r *rec) mustWrite(name string, data []byte) bool {
	if err := os.WriteFile(r.p(name), data, 0o644); err != nil {
		r.add("setup write "+name, errName(err))
		return false
	}
	return true
}

func (r *rec) skip(why string) { r.skipped = why }
