package client

import (
	"sync"
	"sync/atomic"
	"syscall"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
)

// cnode is a FUSE inode. It remembers its parent and name so that, after the
// server lost its handles (restart), it can be resolved again by walking from
// the export root.
type cnode struct {
	id      uint64 // FUSE node ID
	parent  *cnode
	name    string
	ino     uint64 // host inode number, to detect a different file at the same path
	isDir   bool
	lookups uint64 // kernel references

	srv     uint64 // server node handle, valid in epoch
	epoch   uint64
	srvRefs uint64 // server references taken in epoch

	lmu        sync.Mutex
	lockOwners map[uint64]bool // owners holding POSIX locks (flush must release them)

	noXattr xattrAbsent // extended attributes the host said the node lacks

	writes pendingWrites // written behind, not yet acknowledged by the host

	modeGid atomic.Uint64 // last mode | gid<<32 the host reported (for setuid/setgid clearing)
}

func (n *cnode) noteAttr(a *qtfsv1.Attr) { n.modeGid.Store(uint64(a.Mode) | uint64(a.Gid)<<32) }

func (n *cnode) addLockOwner(o uint64) {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	if n.lockOwners == nil {
		n.lockOwners = map[uint64]bool{}
	}
	n.lockOwners[o] = true
}

func (n *cnode) takeLockOwner(o uint64) bool {
	n.lmu.Lock()
	defer n.lmu.Unlock()
	had := n.lockOwners[o]
	delete(n.lockOwners, o)
	return had
}

type childKey struct {
	parent uint64
	name   string
}

type nodeTable struct {
	mu       sync.Mutex
	byID     map[uint64]*cnode
	bySrv    map[uint64]*cnode // current epoch only
	children map[childKey]*cnode
	nextID   uint64
	root     *cnode
}

func newNodeTable(root qtfsv1.Entry, epoch uint64) *nodeTable {
	r := &cnode{id: 1, ino: root.Attr.Ino, isDir: true, lookups: 1, srv: root.Node, epoch: epoch}
	return &nodeTable{
		byID: map[uint64]*cnode{1: r}, bySrv: map[uint64]*cnode{root.Node: r},
		children: map[childKey]*cnode{}, nextID: 2, root: r,
	}
}

func (t *nodeTable) get(id uint64) *cnode {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byID[id]
}

// add records a server entry returned for (parent, name) and takes one kernel
// reference on the resulting node.
func (t *nodeTable) add(parent *cnode, name string, e qtfsv1.Entry, epoch uint64) *cnode {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.bySrv[e.Node]
	if n == nil || n.epoch != epoch {
		n = &cnode{id: t.nextID, srv: e.Node, epoch: epoch}
		t.nextID++
		t.byID[n.id] = n
		t.bySrv[e.Node] = n
	}
	n.srvRefs++
	n.lookups++
	n.ino = e.Attr.Ino
	n.isDir = e.Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR
	if parent != nil {
		if n.parent != nil {
			if old := (childKey{n.parent.id, n.name}); t.children[old] == n {
				delete(t.children, old)
			}
		}
		n.parent, n.name = parent, name
		t.children[childKey{parent.id, name}] = n
	}
	return n
}

// forget drops kernel references; it returns the server references to drop.
func (t *nodeTable) forget(id, n uint64) (srv, refs, epoch uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.byID[id]
	if c == nil || c == t.root {
		return 0, 0, 0
	}
	if n < c.lookups {
		c.lookups -= n
		return 0, 0, 0
	}
	c.lookups = 0
	delete(t.byID, id)
	if t.bySrv[c.srv] == c {
		delete(t.bySrv, c.srv)
	}
	if c.parent != nil && t.children[childKey{c.parent.id, c.name}] == c {
		delete(t.children, childKey{c.parent.id, c.name})
	}
	return c.srv, c.srvRefs, c.epoch
}

func (t *nodeTable) unlinked(parent *cnode, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.children, childKey{parent.id, name})
}

func (t *nodeTable) renamed(op *cnode, oname string, np *cnode, nname string, exchange bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.children[childKey{op.id, oname}]
	b := t.children[childKey{np.id, nname}]
	delete(t.children, childKey{op.id, oname})
	delete(t.children, childKey{np.id, nname})
	if a != nil {
		a.parent, a.name = np, nname
		t.children[childKey{np.id, nname}] = a
	}
	if exchange && b != nil {
		b.parent, b.name = op, oname
		t.children[childKey{op.id, oname}] = b
	}
}

func (t *nodeTable) child(parent *cnode, name string) *cnode {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.children[childKey{parent.id, name}]
}

// lookupSrv finds the node for a server handle of the current epoch.
func (t *nodeTable) lookupSrv(srv, epoch uint64) *cnode {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.bySrv[srv]; n != nil && n.epoch == epoch {
		return n
	}
	return nil
}
