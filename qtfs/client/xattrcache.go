package client

import (
	"sync"
	"time"
)

// The kernel asks for security.capability before every write(2) to a FUSE
// file (file_remove_privs: FUSE never sets S_NOSEC), and ACL-aware tools probe
// system.posix_acl_* on every file they touch. On a file without those
// attributes each probe was a round trip answered ENODATA: an untar spent a
// quarter of its round trips on them. An ENODATA answer is therefore cached
// per node and name, for at most the TTL, and dropped when this client sets
// or removes an attribute of the node or the host pushes an invalidation for
// it (an xattr change on the host is an IN_ATTRIB event).

const capabilityXattr = "security.capability"

type xattrAbsent struct {
	mu  sync.Mutex
	gen uint64               // bumped by every invalidation
	m   map[string]time.Time // name → when the host said ENODATA
	ep  uint64               // epoch of the answers in m
}

// absent reports whether name is known to be missing on n.
func (fs *qfs) xattrAbsent(n *cnode, name string) bool {
	if fs.ttl <= 0 {
		return false
	}
	x := &n.noXattr
	x.mu.Lock()
	defer x.mu.Unlock()
	at, ok := x.m[name]
	if !ok {
		return false
	}
	if time.Since(at) >= fs.ttl || x.ep != fs.s.Epoch() {
		delete(x.m, name)
		return false
	}
	return true
}

// xattrGen is read before asking the host, so that an answer racing with an
// invalidation is not cached.
func (fs *qfs) xattrGen(n *cnode) uint64 {
	n.noXattr.mu.Lock()
	defer n.noXattr.mu.Unlock()
	return n.noXattr.gen
}

func (fs *qfs) noteXattrAbsent(n *cnode, name string, gen, epoch uint64) {
	if fs.ttl <= 0 {
		return
	}
	x := &n.noXattr
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.gen != gen {
		return
	}
	if x.m == nil || x.ep != epoch {
		x.m = map[string]time.Time{}
		x.ep = epoch
	}
	if len(x.m) >= 16 {
		clear(x.m)
	}
	x.m[name] = time.Now()
}

func (fs *qfs) dropXattrAbsent(n *cnode) {
	x := &n.noXattr
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	x.m = nil
}
