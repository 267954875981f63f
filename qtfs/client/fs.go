package client

import (
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// CacheMode selects how much the kernel may cache.
type CacheMode string

const (
	// CacheAuto: entries and attributes are cached for the TTL (1s), page
	// cache is kept across opens and dropped when the host's mtime/size
	// changes or the host pushes an invalidation.
	CacheAuto CacheMode = "auto"
	// CacheStrict: no entry/attribute caching; page cache dropped on open.
	CacheStrict CacheMode = "strict"
	// CacheNone: no caching at all, direct I/O (volatile trees like /proc).
	CacheNone CacheMode = "none"
)

// qfs implements fuse.RawFileSystem by forwarding to the server.
type qfs struct {
	fuse.RawFileSystem
	s     *Session
	nodes *nodeTable
	cache CacheMode
	ttl   time.Duration
	locks bool

	fmu    sync.Mutex
	files  map[uint64]*cfile
	nextFh uint64

	srvMu sync.Mutex
	srv   *fuse.Server
	notes chan note

	pf *prefetcher // nil unless entries are cached (CacheAuto) and readdirplus is available

	dirAttrs dirAttrCache
	wb       allWrites
}

type cfile struct {
	node  *cnode
	flags uint32
	dir   bool

	mu    sync.Mutex
	srv   uint64
	epoch uint64
}

var (
	_ fuse.RawFileSystem = (*qfs)(nil)
)

func newFS(s *Session, cache CacheMode, ttl time.Duration) *qfs {
	root, epoch := s.Root()
	fs := &qfs{RawFileSystem: fuse.NewDefaultRawFileSystem(), s: s, nodes: newNodeTable(root, epoch),
		cache: cache, ttl: ttl, files: map[uint64]*cfile{}, nextFh: 1}
	if cache != CacheAuto {
		fs.ttl = 0
	}
	fs.locks = s.Features()&qtfsv1.FeatLocks != 0
	if fs.ttl > 0 && s.Features()&qtfsv1.FeatReadDirPlus != 0 {
		fs.pf = newPrefetcher()
	}
	fs.notes = make(chan note, 4096)
	go fs.notifyLoop()
	s.SetNotify(fs.notify)
	return fs
}

func (fs *qfs) String() string { return "qtfs" }

func (fs *qfs) Init(srv *fuse.Server) {
	fs.srvMu.Lock()
	fs.srv = srv
	fs.srvMu.Unlock()
}

func st(err error) fuse.Status {
	if err == nil {
		return fuse.OK
	}
	if e, ok := err.(syscall.Errno); ok {
		return fuse.Status(e)
	}
	if err == errConnLost {
		return fuse.EIO
	}
	return fuse.EIO
}

// srvID returns n's server handle for epoch, resolving n again by name from
// its parent if the server lost its handles.
func (fs *qfs) srvID(n *cnode, epoch uint64) (uint64, error) {
	t := fs.nodes
	t.mu.Lock()
	if n.epoch == epoch {
		id := n.srv
		t.mu.Unlock()
		return id, nil
	}
	if n == t.root {
		root, e := fs.s.Root()
		if e != epoch {
			t.mu.Unlock()
			return 0, errConnLost
		}
		n.srv, n.epoch, n.srvRefs = root.Node, epoch, 1
		t.bySrv[root.Node] = n
		t.mu.Unlock()
		return root.Node, nil
	}
	parent, name := n.parent, n.name
	t.mu.Unlock()
	if parent == nil {
		return 0, syscall.ESTALE
	}
	pid, err := fs.srvID(parent, epoch)
	if err != nil {
		return 0, err
	}
	rep, f, err := fs.s.callEpoch(epoch, classControl, &qtfsv1.Request{Op: qtfsv1.OpLookup, Node: pid, Name: name}, nil, false)
	if err != nil {
		return 0, err
	}
	f.Release()
	if rep.Errno != 0 {
		if rep.Errno == uint32(syscall.ENOENT) {
			return 0, syscall.ESTALE
		}
		return 0, syscall.Errno(rep.Errno)
	}
	if rep.Entry.Attr.Ino != n.ino {
		fs.s.queueForget(rep.Entry.Node, 1, epoch)
		return 0, syscall.ESTALE
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if n.epoch == epoch {
		n.srvRefs++
	} else {
		n.srv, n.epoch, n.srvRefs = rep.Entry.Node, epoch, 1
	}
	if t.bySrv[n.srv] == nil {
		t.bySrv[n.srv] = n
	}
	log.L.Debugf("qtfs: re-resolved %q after reconnect", name)
	return n.srv, nil
}

// srvFh returns f's server file handle for epoch, re-opening the file if the
// server lost it.
func (fs *qfs) srvFh(f *cfile, epoch uint64) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.epoch == epoch {
		return f.srv, nil
	}
	nid, err := fs.srvID(f.node, epoch)
	if err != nil {
		return 0, err
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpOpen, Node: nid, Flags: f.flags &^ (syscall.O_CREAT | syscall.O_EXCL | syscall.O_TRUNC)}
	if f.dir {
		req = &qtfsv1.Request{Op: qtfsv1.OpOpenDir, Node: nid}
	}
	rep, fr, err := fs.s.callEpoch(epoch, classControl, req, nil, false)
	if err != nil {
		return 0, err
	}
	fr.Release()
	if rep.Errno != 0 {
		if rep.Errno == uint32(syscall.ENOENT) {
			return 0, syscall.ESTALE
		}
		return 0, syscall.Errno(rep.Errno)
	}
	f.srv, f.epoch = rep.Fh, epoch
	return f.srv, nil
}

func (fs *qfs) node(id uint64) (*cnode, fuse.Status) {
	n := fs.nodes.get(id)
	if n == nil {
		return nil, fuse.Status(syscall.ESTALE)
	}
	return n, fuse.OK
}

func (fs *qfs) file(fh uint64) (*cfile, fuse.Status) {
	fs.fmu.Lock()
	defer fs.fmu.Unlock()
	f := fs.files[fh]
	if f == nil {
		return nil, fuse.EBADF
	}
	return f, fuse.OK
}

func (fs *qfs) addFile(f *cfile) uint64 {
	fs.fmu.Lock()
	defer fs.fmu.Unlock()
	fh := fs.nextFh
	fs.nextFh++
	fs.files[fh] = f
	return fh
}

// rpc sends a request whose node/file fields are filled by prep for the
// epoch of the connection it goes out on, and converts errors to a status.
func (fs *qfs) rpc(cls class, req *qtfsv1.Request, prep func(epoch uint64) error) (*qtfsv1.Reply, *frame, fuse.Status) {
	rep, f, err := fs.s.call(nil, cls, req, prep, false)
	if err != nil {
		return nil, nil, st(err)
	}
	if rep.Errno != 0 {
		f.Release()
		return nil, nil, fuse.Status(rep.Errno)
	}
	return rep, f, fuse.OK
}

// withNode fills req.Node (and Node2) for epoch.
func (fs *qfs) withNodes(req *qtfsv1.Request, n, n2 *cnode) func(uint64) error {
	return func(epoch uint64) error {
		id, err := fs.srvID(n, epoch)
		if err != nil {
			return err
		}
		req.Node = id
		if n2 != nil {
			if req.Node2, err = fs.srvID(n2, epoch); err != nil {
				return err
			}
		}
		return nil
	}
}

func (fs *qfs) withFh(req *qtfsv1.Request, f *cfile) func(uint64) error {
	return func(epoch uint64) error {
		fh, err := fs.srvFh(f, epoch)
		req.Fh = fh
		return err
	}
}

func fillAttr(out *fuse.Attr, a *qtfsv1.Attr) {
	*out = fuse.Attr{
		Ino: a.Ino, Size: a.Size, Blocks: a.Blocks,
		Atime: uint64(a.Atime.Sec), Mtime: uint64(a.Mtime.Sec), Ctime: uint64(a.Ctime.Sec),
		Atimensec: a.Atime.Nsec, Mtimensec: a.Mtime.Nsec, Ctimensec: a.Ctime.Nsec,
		Mode: a.Mode, Nlink: a.Nlink, Owner: fuse.Owner{Uid: a.Uid, Gid: a.Gid}, Rdev: a.Rdev, Blksize: a.Blksize,
	}
}

// entry turns a server entry for (parent, name) into a kernel entry.
func (fs *qfs) entry(parent *cnode, name string, e *qtfsv1.Entry, epoch uint64, out *fuse.EntryOut) {
	n := fs.nodes.add(parent, name, *e, epoch)
	n.noteAttr(&e.Attr)
	out.NodeId = n.id
	out.Generation = 0
	fillAttr(&out.Attr, &e.Attr)
	out.SetEntryTimeout(fs.ttl)
	out.SetAttrTimeout(fs.ttl)
}

func caller(h *fuse.InHeader) qtfsv1.Caller {
	return qtfsv1.Caller{Uid: h.Uid, Gid: h.Gid, Pid: h.Pid}
}

// entryCall runs a request that yields a new entry under parent.
func (fs *qfs) entryCall(parent *cnode, name string, req *qtfsv1.Request, out *fuse.EntryOut) fuse.Status {
	if req.Op != qtfsv1.OpLookup {
		fs.prefetchDirty(parent.id, name)
	}
	var epoch uint64
	rep, f, code := fs.rpc(classControl, req, func(e uint64) error {
		epoch = e
		id, err := fs.srvID(parent, e)
		req.Node = id
		return err
	})
	if !code.Ok() {
		return code
	}
	f.Release()
	fs.noteParent(parent, rep, epoch)
	fs.entry(parent, name, &rep.Entry, epoch, out)
	return fuse.OK
}

func (fs *qfs) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	p, code := fs.node(h.NodeId)
	if !code.Ok() {
		return code
	}
	if len(name) > 255 {
		return fuse.Status(syscall.ENAMETOOLONG) // as the host would say; never from a listing
	}
	if fs.pf != nil {
		for try := 0; try < 2; try++ {
			switch e, epoch, res, left := fs.prefetchTake(p, name); res {
			case prefetchFound:
				fs.s.stats.prefetchHits.Add(1)
				fs.entry(p, name, &e, epoch, out)
				out.SetEntryTimeout(left)
				out.SetAttrTimeout(left)
				return fuse.OK
			}
			// A listing on its way answers this lookup sooner than a round
			// trip of its own would (the lookup that started it goes ahead).
			if try > 0 || !fs.prefetchWait(p) {
				break
			}
		}
		fs.prefetchStart(p)
	}
	fs.wb.wait()
	code = fs.entryCall(p, name, &qtfsv1.Request{Op: qtfsv1.OpLookup, Name: name}, out)
	if code == fuse.ENOENT && fs.ttl > 0 {
		// negative entry, cached for the TTL
		*out = fuse.EntryOut{}
		out.SetEntryTimeout(fs.ttl)
		return fuse.OK
	}
	return code
}

func (fs *qfs) Forget(nodeid, nlookup uint64) {
	srv, refs, epoch := fs.nodes.forget(nodeid, nlookup)
	if refs > 0 {
		fs.s.queueForget(srv, refs, epoch)
	}
}

func (fs *qfs) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	var f *cfile
	if in.Flags()&fuse.FUSE_GETATTR_FH != 0 {
		f, _ = fs.file(in.Fh())
	}
	if f == nil && n.isDir {
		if a, left, ok := fs.takeDirAttr(n.id); ok {
			fillAttr(&out.Attr, &a)
			out.SetTimeout(left)
			return fuse.OK
		}
	}
	fs.waitWrites(n, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpGetAttr}
	rep, fr, code := fs.rpc(classControl, req, func(e uint64) error {
		if err := fs.withNodes(req, n, nil)(e); err != nil {
			return err
		}
		if f != nil && !f.dir {
			if fh, err := fs.srvFh(f, e); err == nil {
				req.Fh = fh
			}
		}
		return nil
	})
	if !code.Ok() {
		return code
	}
	fr.Release()
	n.noteAttr(&rep.Attr)
	fillAttr(&out.Attr, &rep.Attr)
	out.SetTimeout(fs.ttl)
	return fuse.OK
}

func (fs *qfs) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	n, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	fs.prefetchDirtyNode(n)
	fs.dropDirAttr(n.id)
	fs.waitWrites(n, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpSetAttr, Valid: in.Valid, Mode: in.Mode, Uid: in.Uid, Gid: in.Gid,
		Len: in.Size, Atime: qtfsv1.Timespec{Sec: int64(in.Atime), Nsec: in.Atimensec},
		Mtime: qtfsv1.Timespec{Sec: int64(in.Mtime), Nsec: in.Mtimensec}, Caller: caller(&in.InHeader)}
	var f *cfile
	if in.Valid&fuse.FATTR_FH != 0 {
		f, _ = fs.file(in.Fh)
	}
	if f == nil || f.dir {
		req.Valid &^= fuse.FATTR_FH
	}
	kill := req.Valid&fuse.FATTR_KILL_SUIDGID != 0
	req.Valid &^= fuse.FATTR_KILL_SUIDGID
	rep, fr, code := fs.rpc(classControl, req, func(e uint64) error {
		if err := fs.withNodes(req, n, nil)(e); err != nil {
			return err
		}
		if req.Valid&fuse.FATTR_FH != 0 {
			fh, err := fs.srvFh(f, e)
			req.Fh = fh
			return err
		}
		return nil
	})
	if !code.Ok() {
		return code
	}
	fr.Release()
	a := &rep.Attr
	n.noteAttr(a)
	if kill {
		ka, code := fs.killSuidgid(n, a.Mode, a.Gid, &in.InHeader)
		if !code.Ok() {
			return code
		}
		if ka != nil {
			a = ka
		}
	}
	fillAttr(&out.Attr, a)
	out.SetTimeout(fs.ttl)
	return fuse.OK
}

func (fs *qfs) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	p, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	return fs.entryCall(p, name, &qtfsv1.Request{Op: qtfsv1.OpMknod, Name: name, Mode: in.Mode, Rdev: in.Rdev,
		Caller: caller(&in.InHeader)}, out)
}

func (fs *qfs) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	p, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	return fs.entryCall(p, name, &qtfsv1.Request{Op: qtfsv1.OpMkdir, Name: name, Mode: in.Mode,
		Caller: caller(&in.InHeader)}, out)
}

func (fs *qfs) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target string, name string, out *fuse.EntryOut) fuse.Status {
	p, code := fs.node(h.NodeId)
	if !code.Ok() {
		return code
	}
	return fs.entryCall(p, name, &qtfsv1.Request{Op: qtfsv1.OpSymlink, Name: name, Name2: target,
		Caller: caller(h)}, out)
}

func (fs *qfs) remove(op qtfsv1.Op, h *fuse.InHeader, name string) fuse.Status {
	p, code := fs.node(h.NodeId)
	if !code.Ok() {
		return code
	}
	fs.prefetchDirty(p.id, name)
	req := &qtfsv1.Request{Op: op, Name: name}
	var epoch uint64
	rep, f, code := fs.rpc(classControl, req, func(e uint64) error {
		epoch = e
		return fs.withNodes(req, p, nil)(e)
	})
	if !code.Ok() {
		return code
	}
	f.Release()
	fs.noteParent(p, rep, epoch)
	fs.nodes.unlinked(p, name)
	return fuse.OK
}

func (fs *qfs) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fs.remove(qtfsv1.OpUnlink, h, name)
}

func (fs *qfs) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fs.remove(qtfsv1.OpRmdir, h, name)
}

func (fs *qfs) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	op, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	np, code := fs.node(in.Newdir)
	if !code.Ok() {
		return code
	}
	fs.prefetchDirty(op.id, oldName)
	fs.prefetchDirty(np.id, newName)
	fs.dropDirAttr(op.id)
	fs.dropDirAttr(np.id)
	req := &qtfsv1.Request{Op: qtfsv1.OpRename, Name: oldName, Name2: newName, Flags: in.Flags}
	_, f, code := fs.rpc(classControl, req, fs.withNodes(req, op, np))
	if !code.Ok() {
		return code
	}
	f.Release()
	fs.nodes.renamed(op, oldName, np, newName, in.Flags&2 != 0)
	return fuse.OK
}

func (fs *qfs) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	n, code := fs.node(in.Oldnodeid)
	if !code.Ok() {
		return code
	}
	p, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	fs.prefetchDirty(p.id, name)
	fs.prefetchDirtyNode(n)
	fs.waitWrites(n, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpLink, Name: name}
	var epoch uint64
	rep, f, code := fs.rpc(classControl, req, func(e uint64) error {
		epoch = e
		return fs.withNodes(req, n, p)(e)
	})
	if !code.Ok() {
		return code
	}
	f.Release()
	fs.noteParent(p, rep, epoch)
	fs.entry(p, name, &rep.Entry, epoch, out)
	return fuse.OK
}

func (fs *qfs) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	n, code := fs.node(h.NodeId)
	if !code.Ok() {
		return nil, code
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpReadlink}
	rep, f, code := fs.rpc(classControl, req, fs.withNodes(req, n, nil))
	if !code.Ok() {
		return nil, code
	}
	out := append([]byte(nil), rep.Data...)
	f.Release()
	return out, fuse.OK
}

func (fs *qfs) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	n, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpAccess, Mode: in.Mask, Caller: caller(&in.InHeader)}
	_, f, code := fs.rpc(classControl, req, fs.withNodes(req, n, nil))
	if code.Ok() {
		f.Release()
	}
	return code
}

func (fs *qfs) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n, code := fs.node(h.NodeId)
	if !code.Ok() {
		return 0, code
	}
	if fs.xattrAbsent(n, attr) {
		return 0, fuse.ENOATTR
	}
	gen := fs.xattrGen(n)
	req := &qtfsv1.Request{Op: qtfsv1.OpGetXattr, Name: attr, Len: uint64(len(dest))}
	var epoch uint64
	rep, f, code := fs.rpc(classControl, req, func(e uint64) error {
		epoch = e
		return fs.withNodes(req, n, nil)(e)
	})
	if code == fuse.ENOATTR {
		fs.noteXattrAbsent(n, attr, gen, epoch)
	}
	if !code.Ok() {
		return 0, code
	}
	defer f.Release()
	if len(dest) > 0 {
		copy(dest, rep.Data)
	}
	return uint32(rep.N), fuse.OK
}

func (fs *qfs) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n, code := fs.node(h.NodeId)
	if !code.Ok() {
		return 0, code
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpListXattr, Len: uint64(len(dest))}
	rep, f, code := fs.rpc(classControl, req, fs.withNodes(req, n, nil))
	if !code.Ok() {
		return 0, code
	}
	defer f.Release()
	if len(dest) > 0 {
		copy(dest, rep.Data)
	}
	return uint32(rep.N), fuse.OK
}

func (fs *qfs) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	n, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	fs.prefetchDirtyNode(n)
	fs.dropDirAttr(n.id)
	fs.dropXattrAbsent(n)
	defer fs.dropXattrAbsent(n)
	req := &qtfsv1.Request{Op: qtfsv1.OpSetXattr, Name: attr, Flags: in.Flags, Data: data}
	_, f, code := fs.rpc(classControl, req, fs.withNodes(req, n, nil))
	if code.Ok() {
		f.Release()
	}
	return code
}

func (fs *qfs) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	n, code := fs.node(h.NodeId)
	if !code.Ok() {
		return code
	}
	fs.dropXattrAbsent(n)
	defer fs.dropXattrAbsent(n)
	req := &qtfsv1.Request{Op: qtfsv1.OpRemoveXattr, Name: attr}
	_, f, code := fs.rpc(classControl, req, fs.withNodes(req, n, nil))
	if code.Ok() {
		f.Release()
	}
	return code
}

func (fs *qfs) openFlags() uint32 {
	switch fs.cache {
	case CacheNone:
		return fuse.FOPEN_DIRECT_IO
	case CacheAuto:
		return fuse.FOPEN_KEEP_CACHE
	}
	return 0
}

func (fs *qfs) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	p, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	fs.prefetchDirty(p.id, name)
	req := &qtfsv1.Request{Op: qtfsv1.OpCreate, Name: name, Flags: in.Flags, Mode: in.Mode, Caller: caller(&in.InHeader)}
	var epoch uint64
	rep, f, code := fs.rpc(classControl, req, func(e uint64) error {
		epoch = e
		id, err := fs.srvID(p, e)
		req.Node = id
		return err
	})
	if !code.Ok() {
		return code
	}
	f.Release()
	fs.noteParent(p, rep, epoch)
	fs.entry(p, name, &rep.Entry, epoch, &out.EntryOut)
	n := fs.nodes.get(out.NodeId)
	if in.OpenFlags&fuse.OPEN_KILL_SUIDGID != 0 {
		// O_TRUNC of a file that already existed on the host
		if a, code := fs.killSuidgid(n, rep.Entry.Attr.Mode, rep.Entry.Attr.Gid, &in.InHeader); !code.Ok() {
			fs.releaseSrv(rep.Fh, epoch)
			return code
		} else if a != nil {
			fillAttr(&out.Attr, a)
		}
	}
	if in.Flags&(syscall.O_EXCL|syscall.O_TRUNC) != 0 {
		// A file this call made, or truncated (which clears it), has no
		// capability attribute: the probe before its first write needs no
		// round trip.
		fs.noteXattrAbsent(n, capabilityXattr, fs.xattrGen(n), epoch)
	}
	out.Fh = fs.addFile(&cfile{node: n, flags: in.Flags, srv: rep.Fh, epoch: epoch})
	out.OpenFlags = fs.openFlags()
	return fuse.OK
}

func (fs *qfs) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fs.open(in, out, false)
}

func (fs *qfs) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fs.open(in, out, true)
}

func (fs *qfs) open(in *fuse.OpenIn, out *fuse.OpenOut, dir bool) fuse.Status {
	n, code := fs.node(in.NodeId)
	if !code.Ok() {
		return code
	}
	if in.Flags&syscall.O_TRUNC != 0 {
		fs.prefetchDirtyNode(n)
	}
	fs.waitWrites(n, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpOpen, Flags: in.Flags, Caller: caller(&in.InHeader)}
	if dir {
		req = &qtfsv1.Request{Op: qtfsv1.OpOpenDir}
	}
	var epoch uint64
	rep, f, code := fs.rpc(classControl, req, func(e uint64) error {
		epoch = e
		return fs.withNodes(req, n, nil)(e)
	})
	if !code.Ok() {
		return code
	}
	f.Release()
	if !dir && in.Mode&fuse.OPEN_KILL_SUIDGID != 0 {
		if _, code := fs.killSuidgidKnown(n, &in.InHeader); !code.Ok() {
			fs.releaseSrv(rep.Fh, epoch)
			return code
		}
	}
	out.Fh = fs.addFile(&cfile{node: n, flags: in.Flags, dir: dir, srv: rep.Fh, epoch: epoch})
	if !dir {
		out.OpenFlags = fs.openFlags()
	}
	return fuse.OK
}

// readResult hands the reply buffer to go-fuse and releases it after the
// data went to the kernel: no copy between socket and /dev/fuse.
type readResult struct {
	data []byte
	f    *frame
}

func (r *readResult) Bytes(buf []byte) ([]byte, fuse.Status) { return r.data, fuse.OK }
func (r *readResult) Size() int                              { return len(r.data) }
func (r *readResult) Done()                                  { r.f.Release() }

// Slices makes go-fuse write the reply with one writev. Without it, go-fuse
// first tries to splice the result (it cannot: the data is not in a file),
// failing and logging a line for every read of 1 MiB.
func (r *readResult) Slices() ([][]byte, fuse.Status) { return [][]byte{r.data}, fuse.OK }

func (fs *qfs) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	f, code := fs.file(in.Fh)
	if !code.Ok() {
		return nil, code
	}
	fs.waitWrites(f.node, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpRead, Off: in.Offset, Len: uint64(in.Size)}
	rep, fr, code := fs.rpc(classData, req, fs.withFh(req, f))
	if !code.Ok() {
		return nil, code
	}
	return &readResult{data: rep.Data, f: fr}, fuse.OK
}

func (fs *qfs) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	f, code := fs.file(in.Fh)
	if !code.Ok() {
		return 0, code
	}
	fs.prefetchDirtyNode(f.node)
	// Page-cache writeback (shared mmap) stays synchronous: msync and
	// munmap must find the data on the host when they return.
	if fs.asyncWrite(f) && in.WriteFlags&(fuse.WRITE_KILL_SUIDGID|fuse.WRITE_CACHE) == 0 {
		if code := fs.writeBehind(f, in.Offset, data); !code.Ok() {
			return 0, code
		}
		return uint32(len(data)), fuse.OK
	}
	if code := fs.waitWrites(f.node, true); !code.Ok() {
		return 0, code
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpWrite, Off: in.Offset, Data: data}
	rep, fr, code := fs.rpc(classData, req, fs.withFh(req, f))
	if !code.Ok() {
		return 0, code
	}
	fr.Release()
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		if _, code := fs.killSuidgidKnown(f.node, &in.InHeader); !code.Ok() {
			return 0, code
		}
	}
	return uint32(rep.N), fuse.OK
}

func (fs *qfs) release(fh uint64) {
	fs.fmu.Lock()
	f := fs.files[fh]
	delete(fs.files, fh)
	fs.fmu.Unlock()
	if f == nil {
		return
	}
	if !f.dir {
		fs.waitWrites(f.node, false)
	}
	f.mu.Lock()
	srv, epoch := f.srv, f.epoch
	f.mu.Unlock()
	op := qtfsv1.OpRelease
	if f.dir {
		op = qtfsv1.OpReleaseDir
	}
	fs.releaseOp(op, srv, epoch)
}

// releaseSrv drops a server file handle the kernel never got.
func (fs *qfs) releaseSrv(srv, epoch uint64) { fs.releaseOp(qtfsv1.OpRelease, srv, epoch) }

func (fs *qfs) releaseOp(op qtfsv1.Op, srv, epoch uint64) {
	// Only release a handle of the current epoch: an older one is gone already.
	if _, fr, err := fs.s.callEpoch(epoch, classControl, &qtfsv1.Request{Op: op, Fh: srv}, nil, false); err == nil {
		fr.Release()
	}
}

func (fs *qfs) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) { fs.release(in.Fh) }
func (fs *qfs) ReleaseDir(in *fuse.ReleaseIn)                      { fs.release(in.Fh) }

func (fs *qfs) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	f, code := fs.file(in.Fh)
	if !code.Ok() {
		return code
	}
	// close() reports errors of writes written behind.
	werr := fs.waitWrites(f.node, true)
	// close() drops the POSIX locks its process holds on the file, through
	// whichever descriptor they were taken.
	if !f.node.takeLockOwner(in.LockOwner) {
		return werr
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpFlush, Owner: in.LockOwner}
	_, fr, code := fs.rpc(classControl, req, fs.withFh(req, f))
	if code.Ok() {
		fr.Release()
	}
	if !werr.Ok() {
		return werr
	}
	return code
}

func (fs *qfs) fsync(fh uint64, flags uint32) fuse.Status {
	f, code := fs.file(fh)
	if !code.Ok() {
		return code
	}
	if code := fs.waitWrites(f.node, !f.dir); !code.Ok() {
		return code
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpFsync, Flags: flags & 1}
	_, fr, code := fs.rpc(classData, req, fs.withFh(req, f))
	if code.Ok() {
		fr.Release()
	}
	return code
}

func (fs *qfs) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return fs.fsync(in.Fh, in.FsyncFlags)
}

func (fs *qfs) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return fs.fsync(in.Fh, in.FsyncFlags)
}

func (fs *qfs) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	f, code := fs.file(in.Fh)
	if !code.Ok() {
		return code
	}
	fs.prefetchDirtyNode(f.node)
	fs.waitWrites(f.node, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpFallocate, Mode: in.Mode, Off: in.Offset, Len: in.Length}
	_, fr, code := fs.rpc(classData, req, fs.withFh(req, f))
	if code.Ok() {
		fr.Release()
	}
	return code
}

func (fs *qfs) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	f, code := fs.file(in.Fh)
	if !code.Ok() {
		return code
	}
	fs.waitWrites(f.node, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpLseek, Off: in.Offset, Flags: in.Whence}
	rep, fr, code := fs.rpc(classControl, req, fs.withFh(req, f))
	if !code.Ok() {
		return code
	}
	fr.Release()
	out.Offset = rep.N
	return fuse.OK
}

func (fs *qfs) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	fin, code := fs.file(in.FhIn)
	if !code.Ok() {
		return 0, code
	}
	fout, code := fs.file(in.FhOut)
	if !code.Ok() {
		return 0, code
	}
	fs.prefetchDirtyNode(fout.node)
	fs.waitWrites(fin.node, false)
	fs.waitWrites(fout.node, false)
	req := &qtfsv1.Request{Op: qtfsv1.OpCopyFileRange, Off: in.OffIn, Off2: in.OffOut, Len: in.Len, Flags: uint32(in.Flags)}
	rep, fr, code := fs.rpc(classData, req, func(e uint64) error {
		var err error
		if req.Fh, err = fs.srvFh(fin, e); err != nil {
			return err
		}
		req.Fh2, err = fs.srvFh(fout, e)
		return err
	})
	if !code.Ok() {
		return 0, code
	}
	fr.Release()
	return uint32(rep.N), fuse.OK
}

func (fs *qfs) lock(cancel <-chan struct{}, op qtfsv1.Op, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	f, code := fs.file(in.Fh)
	if !code.Ok() {
		return code
	}
	fs.waitWrites(f.node, false)
	req := &qtfsv1.Request{Op: op, Owner: in.Owner, Flags: in.LkFlags,
		Lock: qtfsv1.Lock{Start: in.Lk.Start, End: in.Lk.End, Type: in.Lk.Typ, Pid: in.Lk.Pid}}
	if op != qtfsv1.OpGetLk && in.LkFlags&fuse.FUSE_LK_FLOCK == 0 {
		f.node.addLockOwner(in.Owner)
	}
	if op != qtfsv1.OpSetLkw {
		cancel = nil
	}
	rep, fr, err := fs.s.call(cancel, classControl, req, fs.withFh(req, f), false)
	if err != nil {
		return st(err)
	}
	fr.Release()
	if rep.Errno != 0 {
		return fuse.Status(rep.Errno)
	}
	if out != nil {
		out.Lk = fuse.FileLock{Start: rep.Lock.Start, End: rep.Lock.End, Typ: rep.Lock.Type, Pid: rep.Lock.Pid}
	}
	return fuse.OK
}

func (fs *qfs) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	return fs.lock(nil, qtfsv1.OpGetLk, in, out)
}

func (fs *qfs) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return fs.lock(nil, qtfsv1.OpSetLk, in, nil)
}

func (fs *qfs) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return fs.lock(cancel, qtfsv1.OpSetLkw, in, nil)
}

func (fs *qfs) readdir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	f, code := fs.file(in.Fh)
	if !code.Ok() {
		return code
	}
	dir := f.node
	req := &qtfsv1.Request{Op: qtfsv1.OpReadDir, Off: in.Offset, Len: uint64(in.Size)}
	if plus {
		req.Flags = 1
		fs.wb.wait()
	}
	var epoch uint64
	rep, fr, code := fs.rpc(classControl, req, func(e uint64) error {
		epoch = e
		return fs.withFh(req, f)(e)
	})
	if !code.Ok() {
		return code
	}
	defer fr.Release()
	for i := range rep.Dirents {
		de := &rep.Dirents[i]
		d := fuse.DirEntry{Mode: de.Type, Name: de.Name, Ino: de.Ino, Off: de.Off}
		if !plus {
			if !out.AddDirEntry(d) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(d)
		if eo == nil {
			// Did not fit: give back the references the server took.
			for _, rest := range rep.Dirents[i:] {
				if rest.Node != 0 {
					fs.s.queueForget(rest.Node, 1, epoch)
				}
			}
			break
		}
		if de.Node != 0 {
			fs.entry(dir, de.Name, &qtfsv1.Entry{Node: de.Node, Attr: de.Attr}, epoch, eo)
		}
	}
	return fuse.OK
}

func (fs *qfs) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readdir(in, out, false)
}

func (fs *qfs) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readdir(in, out, true)
}

func (fs *qfs) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	n, code := fs.node(h.NodeId)
	if !code.Ok() {
		n = fs.nodes.root
	}
	req := &qtfsv1.Request{Op: qtfsv1.OpStatFs}
	rep, fr, code := fs.rpc(classControl, req, fs.withNodes(req, n, nil))
	if !code.Ok() {
		return code
	}
	fr.Release()
	s := &rep.Statfs
	*out = fuse.StatfsOut{Blocks: s.Blocks, Bfree: s.Bfree, Bavail: s.Bavail, Files: s.Files, Ffree: s.Ffree,
		Bsize: s.Bsize, NameLen: s.NameLen, Frsize: s.Frsize}
	return fuse.OK
}

// notify queues a server-pushed invalidation. The kernel calls that apply it
// run on their own goroutine: they may wait for inode locks held by requests
// that wait on the connection reader which delivered the notification.
func (fs *qfs) notify(req *qtfsv1.Request) {
	select {
	case fs.notes <- note{req: req, epoch: fs.s.Epoch()}:
	default: // queue full: the TTL still bounds staleness
	}
}

type note struct {
	req   *qtfsv1.Request
	epoch uint64
}

func (fs *qfs) notifyLoop() {
	for nt := range fs.notes {
		fs.srvMu.Lock()
		srv := fs.srv
		fs.srvMu.Unlock()
		if srv == nil {
			continue
		}
		n := fs.nodes.lookupSrv(nt.req.Node, nt.epoch)
		if n == nil {
			continue
		}
		switch nt.req.Op {
		case qtfsv1.OpNotifyInvalEntry:
			fs.prefetchDrop(n.id)
			fs.dropDirAttr(n.id)
			srv.EntryNotify(n.id, nt.req.Name)
		case qtfsv1.OpNotifyInvalInode:
			fs.prefetchDropParent(n)
			fs.dropDirAttr(n.id)
			fs.dropXattrAbsent(n)
			srv.InodeNotify(n.id, int64(nt.req.Off), int64(nt.req.Len))
		}
	}
}

func (fs *qfs) closeNotes() {
	fs.SetNotifyOff()
}

// SetNotifyOff stops applying notifications (the mount is gone).
func (fs *qfs) SetNotifyOff() {
	fs.srvMu.Lock()
	fs.srv = nil
	fs.srvMu.Unlock()
}
