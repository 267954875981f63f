package server

import (
	"encoding/binary"
	"syscall"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// maxDirReply bounds one readdir reply whatever size the client asks for.
const maxDirReply = 128 << 10

// direntSize is the size FUSE needs for an entry, so a reply never holds more
// than the kernel's buffer (entries the client could not pass on would leak
// node references in readdirplus).
func direntSize(name string, plus bool) int {
	n := (24 + len(name) + 7) &^ 7
	if plus {
		n += 128
	}
	return n
}

func (ss *session) readdir(req *qtfsv1.Request, rep *qtfsv1.Reply) error {
	d, err := ss.dir(req.Fh)
	if err != nil {
		return err
	}
	plus := req.Flags&1 != 0
	budget := int(req.Len)
	if budget > maxDirReply {
		budget = maxDirReply
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := unix.Seek(d.fd, int64(req.Off), 0); err != nil {
		return err
	}
	if d.buf == nil {
		d.buf = make([]byte, 32<<10)
	}
	rep.Plus = plus
	used := 0
	for {
		n, err := unix.Getdents(d.fd, d.buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		b := d.buf[:n]
		for len(b) >= 19 {
			ino := binary.LittleEndian.Uint64(b[0:])
			off := binary.LittleEndian.Uint64(b[8:])
			reclen := int(binary.LittleEndian.Uint16(b[16:]))
			typ := b[18]
			if reclen < 19 || reclen > len(b) {
				return syscall.EIO
			}
			nameb := b[19:reclen]
			for i, c := range nameb {
				if c == 0 {
					nameb = nameb[:i]
					break
				}
			}
			name := string(nameb)
			b = b[reclen:]
			sz := direntSize(name, plus)
			if used+sz > budget {
				return nil
			}
			used += sz
			de := qtfsv1.Dirent{Ino: ino, Off: off, Type: uint32(typ) << 12, Name: name}
			if plus && name != "." && name != ".." {
				if e, err := ss.lookup(d.fd, name); err == nil {
					de.Node, de.Attr = e.Node, e.Attr
				}
			}
			rep.Dirents = append(rep.Dirents, de)
		}
	}
}
