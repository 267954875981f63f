package qtfsv1

import "fmt"

// Version is the protocol version this package speaks.
const Version = 1

// Magic opens every Hello payload ("QTFS").
const Magic = 0x53465451

// Op is a frame opcode.
type Op uint16

const (
	OpHello Op = iota + 1
	OpPing
	OpLookup
	OpForget
	OpGetAttr
	OpSetAttr
	OpReadlink
	OpSymlink
	OpMknod
	OpMkdir
	OpUnlink
	OpRmdir
	OpRename
	OpLink
	OpOpen
	OpCreate
	OpRead
	OpWrite
	OpRelease
	OpFlush
	OpFsync
	OpOpenDir
	OpReadDir
	OpReleaseDir
	OpStatFs
	OpSetXattr
	OpGetXattr
	OpListXattr
	OpRemoveXattr
	OpAccess
	OpFallocate
	OpLseek
	OpCopyFileRange
	OpGetLk
	OpSetLk
	OpSetLkw
	OpNotifyInvalEntry // server → client: drop a cached name in a directory
	OpNotifyInvalInode // server → client: drop cached attributes (and data) of a node
	OpInterrupt        // client → server, one-way: stop waiting in request Off (setlkw) with EINTR

	opMax
)

var opNames = [...]string{"", "hello", "ping", "lookup", "forget", "getattr", "setattr", "readlink", "symlink",
	"mknod", "mkdir", "unlink", "rmdir", "rename", "link", "open", "create", "read", "write", "release", "flush",
	"fsync", "opendir", "readdir", "releasedir", "statfs", "setxattr", "getxattr", "listxattr", "removexattr",
	"access", "fallocate", "lseek", "copy_file_range", "getlk", "setlk", "setlkw", "notify_inval_entry",
	"notify_inval_inode", "interrupt"}

// Valid reports whether op is a known opcode.
func (op Op) Valid() bool { return op >= OpHello && op < opMax }

func (op Op) String() string {
	if op.Valid() {
		return opNames[op]
	}
	return fmt.Sprintf("op(%d)", uint16(op))
}

// NumOps is the number of opcode slots (for per-op counters).
const NumOps = int(opMax)

// Features negotiated in the handshake: the session uses the intersection.
const (
	FeatReadDirPlus uint64 = 1 << iota // readdir returns entries with attributes and node handles
	FeatNotify                         // server pushes invalidations (inotify)
	FeatLocks                          // POSIX and flock locks are held on the host
	FeatXattr                          // extended attributes
	// FeatReplay: request IDs are unique within the session (the client
	// sends a request again after a reconnect under its first ID) and the
	// server answers an ID it already executed for a non-idempotent request
	// with the reply it recorded, instead of executing it twice.
	FeatReplay
	FeatAll = FeatReadDirPlus | FeatNotify | FeatLocks | FeatXattr | FeatReplay
)

// Limits enforced by decoders.
const (
	MaxName    = 4096 // names, symlink targets, export names (the server applies NAME_MAX)
	MaxForgets = 1 << 14
)

// Timespec is seconds and nanoseconds since the epoch.
type Timespec struct {
	Sec  int64
	Nsec uint32
}

// Attr is a file's attributes as the host reports them.
type Attr struct {
	Ino, Size, Blocks   uint64
	Atime, Mtime, Ctime Timespec
	Mode, Nlink         uint32
	Uid, Gid            uint32
	Rdev, Blksize       uint32
}

// Entry is a node handle with its attributes.
type Entry struct {
	Node uint64
	Attr Attr
}

// Dirent is one directory entry; Node/Attr are set only by readdirplus
// (Node 0: not looked up, e.g. "." and "..").
type Dirent struct {
	Ino  uint64
	Off  uint64 // cookie of the next entry
	Type uint32 // S_IFMT bits
	Name string
	Node uint64
	Attr Attr
}

// Statfs is statfs(2) of the export's file system.
type Statfs struct {
	Blocks, Bfree, Bavail, Files, Ffree uint64
	Bsize, NameLen, Frsize              uint32
}

// Lock is a byte-range lock; End is inclusive, 1<<63-1 means EOF.
type Lock struct {
	Start, End uint64
	Type       uint32 // F_RDLCK, F_WRLCK, F_UNLCK
	Pid        uint32
}

// Forget drops N lookups of Node.
type Forget struct {
	Node, N uint64
}

// Caller is the DPU-side process a request runs for.
type Caller struct {
	Uid, Gid, Pid uint32
}

// Hello opens a connection. Session is chosen by the client (random); every
// connection of one mount carries the same Session so they share handles, and
// a reconnect with the same Session finds its handles if the server survived.
type Hello struct {
	Magic    uint32
	Version  uint32
	Features uint64
	Session  [16]byte
	Export   string
}

// HelloReply answers Hello. Generation changes whenever the server's handle
// tables were lost (server restart, session expired): the client must then
// re-resolve its nodes and re-open its files.
type HelloReply struct {
	Version    uint32
	Features   uint64
	Generation uint64
	Root       Entry
	ReadOnly   bool
}

// Request is the union of every request's fields; layout.go says which fields
// each opcode carries.
type Request struct {
	Op       Op
	Node     uint64
	Node2    uint64
	Fh       uint64
	Fh2      uint64
	Off      uint64
	Off2     uint64
	Len      uint64
	Flags    uint32
	Mode     uint32
	Rdev     uint32
	Valid    uint32 // setattr: FATTR_* bits (same values as FUSE)
	Uid, Gid uint32 // setattr targets
	Atime    Timespec
	Mtime    Timespec
	Owner    uint64 // lock owner
	Caller   Caller
	Lock     Lock
	Name     string
	Name2    string
	Data     []byte // always last on the wire
	Forgets  []Forget
	Hello    Hello
}

// Reply is the union of every reply's fields.
type Reply struct {
	Errno   uint32 // 0 or a Linux errno; the body follows only when 0
	Entry   Entry
	Attr    Attr
	Fh      uint64
	N       uint64 // bytes written/copied, lseek offset, xattr size
	Lock    Lock
	Statfs  Statfs
	Plus    bool
	Dirents []Dirent
	Data    []byte // always last on the wire
	Hello   HelloReply
	// Parent is the directory's attributes after an operation that changed
	// it (create, mkdir, mknod, symlink, link, unlink, rmdir).
	Parent Attr
}
