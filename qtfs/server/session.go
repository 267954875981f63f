package server

import (
	"sync"
	"sync/atomic"
	"syscall"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// devIno identifies an inode on the host.
type devIno struct{ dev, ino uint64 }

// node is a host inode a client holds a handle to. Directories keep an O_PATH
// fd (they are the dirfd of every *at call beneath them); other inodes keep a
// kernel file handle when the file system supports them, so holding many
// files does not exhaust the fd limit, and an O_PATH fd otherwise.
type node struct {
	id     uint64
	key    devIno
	mode   uint32 // S_IFMT bits
	fd     int    // O_PATH fd or -1
	held   bool   // fd is a directory fd counted in Server.heldDirs
	handle unix.FileHandle
	refs   uint64 // lookups the client holds
	wd     int    // inotify watch of a directory, or -1

	lmu   sync.Mutex
	locks map[uint64]*lockFd // lock owner → its own open file description
}

// lockFd carries one owner's locks on a node as OFD locks, so POSIX locks of
// different DPU processes (and flock locks of different opens) conflict as
// they would locally. fh is the open it was created through.
type lockFd struct {
	fd  int
	fh  uint64
	pid uint32 // DPU pid that last took a lock through it (F_GETLK reports it)
}

// dropLocks closes lock descriptions of owner (POSIX close semantics), or of
// every owner created through fh when owner is 0 (release).
func (n *node) dropLocks(owner, fh uint64) {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	for o, l := range n.locks {
		if (owner != 0 && o == owner) || (owner == 0 && l.fh == fh) {
			unix.Close(l.fd)
			delete(n.locks, o)
		}
	}
}

func (n *node) isDir() bool { return n.mode == unix.S_IFDIR }

type openFile struct {
	fh    uint64
	fd    int
	node  *node
	flags int
}

type openDir struct {
	mu   sync.Mutex
	fd   int
	node *node
	buf  []byte
}

// session is the state one client mount shares across its connections.
type session struct {
	srv *Server
	id  [16]byte
	exp *export
	gen uint64

	mu     sync.Mutex
	nodes  map[uint64]*node
	byKey  map[devIno]*node
	files  map[uint64]*openFile
	dirs   map[uint64]*openDir
	nextID uint64
	conns  map[*conn]struct{}
	root   *node
	dead   bool

	watch atomic.Pointer[watcher]

	replies replayCache // FeatReplay
}

func newSession(s *Server, id [16]byte, exp *export) (*session, error) {
	fd, err := unix.Openat(exp.rootFd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	ss := &session{
		srv: s, id: id, exp: exp, gen: randUint64(),
		nodes: map[uint64]*node{}, byKey: map[devIno]*node{},
		files: map[uint64]*openFile{}, dirs: map[uint64]*openDir{},
		conns: map[*conn]struct{}{}, nextID: 1,
	}
	ss.root = &node{id: 1, key: devIno{st.Dev, st.Ino}, mode: unix.S_IFDIR, fd: fd, refs: 1, wd: -1}
	ss.nodes[1] = ss.root
	ss.byKey[ss.root.key] = ss.root
	ss.nextID = 2
	return ss, nil
}

func (ss *session) addConn(c *conn) {
	ss.mu.Lock()
	ss.conns[c] = struct{}{}
	ss.mu.Unlock()
}

// removeConn reports whether the session has become idle.
func (ss *session) removeConn(c *conn) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.conns, c)
	return len(ss.conns) == 0
}

func (ss *session) idle() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.conns) == 0
}

// destroy closes every fd the session holds.
func (ss *session) destroy() {
	ss.mu.Lock()
	if ss.dead {
		ss.mu.Unlock()
		return
	}
	ss.dead = true
	files, dirs, nodes := ss.files, ss.dirs, ss.nodes
	ss.files, ss.dirs, ss.nodes, ss.byKey = nil, nil, nil, nil
	w := ss.watch.Load()
	ss.mu.Unlock()
	if w != nil {
		w.close()
	}
	for _, f := range files {
		f.closeAll()
	}
	for _, d := range dirs {
		unix.Close(d.fd)
	}
	for _, n := range nodes {
		n.dropLocks(0, 0)
		if n != ss.root {
			ss.release(n)
		} else {
			n.closeFd()
		}
	}
}

func (ss *session) rootEntry() (qtfsv1.Entry, error) {
	var st unix.Stat_t
	if err := unix.Fstat(ss.root.fd, &st); err != nil {
		return qtfsv1.Entry{}, err
	}
	return qtfsv1.Entry{Node: 1, Attr: toAttr(&st)}, nil
}

func (ss *session) node(id uint64) (*node, error) {
	ss.mu.Lock()
	n := ss.nodes[id]
	ss.mu.Unlock()
	if n == nil {
		return nil, syscall.ESTALE
	}
	return n, nil
}

// dirAt returns a directory node and an fd of it for *at calls; done
// releases the fd (a no-op for directories held open).
func (ss *session) dirAt(id uint64) (*node, int, func(), error) {
	n, err := ss.node(id)
	if err != nil {
		return nil, -1, nil, err
	}
	fd, done, err := ss.dirFd(n)
	if err != nil {
		return nil, -1, nil, err
	}
	return n, fd, done, nil
}

// dirFd returns an O_PATH fd of directory node n.
func (ss *session) dirFd(n *node) (int, func(), error) {
	if !n.isDir() {
		return -1, nil, syscall.ENOTDIR
	}
	if n.fd >= 0 {
		return n.fd, func() {}, nil
	}
	fd, err := openHandle(ss.exp.mountFd, n.handle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return -1, nil, err
	}
	return fd, func() { unix.Close(fd) }, nil
}

// adopt registers the inode behind fd (an O_PATH fd of a freshly resolved
// name) as a node with one more client reference. It takes ownership of fd.
func (ss *session) adopt(fd int, st *unix.Stat_t) (*node, error) {
	key := devIno{st.Dev, st.Ino}
	ss.mu.Lock()
	if ss.dead {
		ss.mu.Unlock()
		unix.Close(fd)
		return nil, syscall.ESTALE
	}
	if n := ss.byKey[key]; n != nil && n.mode == st.Mode&unix.S_IFMT && n.fd >= 0 {
		// n holds the inode open, so its number cannot have been reused.
		n.refs++
		ss.mu.Unlock()
		unix.Close(fd)
		return n, nil
	}
	old := ss.byKey[key]
	ss.mu.Unlock()
	var h unix.FileHandle
	haveH := false
	if old != nil && old.mode == st.Mode&unix.S_IFMT {
		// A handle-only node: the inode number may have been freed and
		// reused; the handle (which carries the generation) tells.
		if hh, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH); err == nil {
			h, haveH = hh, true
			if sameHandle(hh, old.handle) {
				ss.mu.Lock()
				if ss.byKey[key] == old && !ss.dead {
					old.refs++
					ss.mu.Unlock()
					unix.Close(fd)
					return old, nil
				}
				ss.mu.Unlock()
			}
		}
	}

	n := &node{key: key, mode: st.Mode & unix.S_IFMT, fd: fd, wd: -1}
	keepDir := false
	if n.isDir() {
		if ss.srv.heldDirs.Add(1) <= int64(ss.srv.cfg.MaxHeldDirs) || ss.exp.mountID < 0 {
			keepDir, n.held = true, true
		} else {
			ss.srv.heldDirs.Add(-1)
		}
	}
	if !keepDir && ss.exp.mountID >= 0 {
		if !haveH {
			if hh, mid, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH); err == nil && mid == ss.exp.mountID {
				h, haveH = hh, true
			}
		}
		if haveH {
			n.handle = h
			unix.Close(fd)
			n.fd = -1
		} else if n.isDir() {
			ss.srv.heldDirs.Add(1) // no handle: the fd must stay
			n.held = true
		}
	}

	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.dead {
		ss.release(n)
		return nil, syscall.ESTALE
	}
	if cur := ss.byKey[key]; cur != nil && cur != old { // raced with another lookup
		cur.refs++
		ss.release(n)
		return cur, nil
	}
	n.id = ss.nextID
	ss.nextID++
	n.refs = 1
	ss.nodes[n.id] = n
	ss.byKey[key] = n
	if w := ss.watch.Load(); n.isDir() && w != nil {
		w.add(n)
	}
	return n, nil
}

// adoptOpen registers the regular file behind an open (non-O_PATH) fd,
// which stays owned by the caller. Only when the file system has no file
// handles is an O_PATH fd made for the node.
func (ss *session) adoptOpen(fd int, st *unix.Stat_t) (*node, error) {
	if ss.exp.mountID >= 0 {
		if h, mid, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH); err == nil && mid == ss.exp.mountID {
			key := devIno{st.Dev, st.Ino}
			ss.mu.Lock()
			defer ss.mu.Unlock()
			if ss.dead {
				return nil, syscall.ESTALE
			}
			if cur := ss.byKey[key]; cur != nil && sameHandle(h, cur.handle) {
				cur.refs++
				return cur, nil
			}
			n := &node{id: ss.nextID, key: key, mode: unix.S_IFREG, fd: -1, handle: h, refs: 1, wd: -1}
			ss.nextID++
			ss.nodes[n.id] = n
			ss.byKey[key] = n
			return n, nil
		}
	}
	pfd, err := unix.Open(procPath(fd), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return ss.adopt(pfd, st)
}

func (n *node) closeFd() {
	if n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
	}
}

// release closes n's fd and returns its slot in the held-directory count.
func (ss *session) release(n *node) {
	if n.held {
		ss.srv.heldDirs.Add(-1)
		n.held = false
	}
	n.closeFd()
}

func (ss *session) forget(id, count uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	n := ss.nodes[id]
	if n == nil || n == ss.root {
		return
	}
	if count >= n.refs {
		delete(ss.nodes, id)
		if ss.byKey[n.key] == n {
			delete(ss.byKey, n.key)
		}
		if w := ss.watch.Load(); w != nil && n.wd >= 0 {
			w.remove(n)
		}
		ss.release(n)
		return
	}
	n.refs -= count
}

// dropStale removes a node whose inode is gone from the host, so a later
// lookup of a new inode with the same number gets a fresh node.
func (ss *session) dropKey(key devIno) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byKey, key)
}

func (ss *session) addFile(f *openFile) uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	id := ss.nextID
	ss.nextID++
	f.fh = id
	ss.files[id] = f
	return id
}

func (ss *session) file(fh uint64) (*openFile, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	f := ss.files[fh]
	if f == nil {
		return nil, syscall.EBADF
	}
	return f, nil
}

func (ss *session) takeFile(fh uint64) *openFile {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	f := ss.files[fh]
	delete(ss.files, fh)
	return f
}

func (ss *session) addDir(d *openDir) uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	id := ss.nextID
	ss.nextID++
	ss.dirs[id] = d
	return id
}

func (ss *session) dir(fh uint64) (*openDir, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	d := ss.dirs[fh]
	if d == nil {
		return nil, syscall.EBADF
	}
	return d, nil
}

func (ss *session) takeDir(fh uint64) *openDir {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	d := ss.dirs[fh]
	delete(ss.dirs, fh)
	return d
}

// anyConn returns a connection to push notifications on.
func (ss *session) anyConn() *conn {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for c := range ss.conns {
		return c
	}
	return nil
}

func (f *openFile) closeAll() {
	if f.node != nil {
		f.node.dropLocks(0, f.fh)
	}
	unix.Close(f.fd)
}

func sameHandle(a, b unix.FileHandle) bool {
	if b == (unix.FileHandle{}) {
		return false
	}
	return a.Type() == b.Type() && string(a.Bytes()) == string(b.Bytes())
}
