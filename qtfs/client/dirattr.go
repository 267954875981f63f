package client

import (
	"sync"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
)

// After this client creates or removes a name, the kernel drops the
// directory's cached attributes and, with default_permissions, asks for them
// again on the very next path walk. The server returns the directory's
// attributes with the reply of such an operation; the next GETATTR of the
// directory is answered from them (once, and only within the TTL and until
// anything else touches the directory), saving a round trip per create.

type dirAttr struct {
	a     qtfsv1.Attr
	at    time.Time
	epoch uint64
}

type dirAttrCache struct {
	mu sync.Mutex
	m  map[uint64]dirAttr
}

func (fs *qfs) noteParent(dir *cnode, rep *qtfsv1.Reply, epoch uint64) {
	if fs.ttl <= 0 || rep.Parent.Ino == 0 || rep.Parent.Ino != dir.ino {
		return
	}
	c := &fs.dirAttrs
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[uint64]dirAttr{}
	}
	if len(c.m) > 4096 {
		for id, d := range c.m {
			if time.Since(d.at) >= fs.ttl {
				delete(c.m, id)
			}
		}
	}
	c.m[dir.id] = dirAttr{a: rep.Parent, at: time.Now(), epoch: epoch}
}

// takeDirAttr returns a fresh post-operation attribute set for a directory
// and how long the kernel may keep it.
func (fs *qfs) takeDirAttr(id uint64) (qtfsv1.Attr, time.Duration, bool) {
	c := &fs.dirAttrs
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.m[id]
	if !ok {
		return qtfsv1.Attr{}, 0, false
	}
	delete(c.m, id)
	age := time.Since(d.at)
	if age >= fs.ttl || d.epoch != fs.s.Epoch() {
		return qtfsv1.Attr{}, 0, false
	}
	return d.a, fs.ttl - age, true
}

func (fs *qfs) dropDirAttr(id uint64) {
	c := &fs.dirAttrs
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}
