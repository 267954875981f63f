package client

import (
	"sync"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
)

// Lookup prefetch: the first lookup that misses in a directory also lists
// that directory with readdirplus in the background; later lookups of its
// names are answered from that listing for up to the entry TTL, without a
// round trip to the host. This is what makes a cold stat of many files in a
// directory cost about one FUSE round trip each instead of one network round
// trip. Entries hold a server reference until used or expired.
//
// Coherence: a listing is dropped when the host reports a change in the
// directory, when this client changes the directory or any file in it, and
// when the TTL expires, so it is never staler than the kernel's own caches.

// maxPrefetch bounds one listing (one readdirplus reply's worth).
const maxPrefetch = 128 << 10

type listing struct {
	at    time.Time
	epoch uint64
	ents  map[string]qtfsv1.Entry
}

type prefetcher struct {
	mu       sync.Mutex
	dirs     map[uint64]*listing // by directory cnode id
	inflight map[uint64]bool
	recent   map[uint64]time.Time // last prefetch start per directory
	ver      map[uint64]uint64    // bumped by every drop: a listing started before is discarded
}

func newPrefetcher() *prefetcher {
	return &prefetcher{dirs: map[uint64]*listing{}, inflight: map[uint64]bool{}, recent: map[uint64]time.Time{}, ver: map[uint64]uint64{}}
}

// take returns and removes a fresh prefetched entry for (dir, name).
func (fs *qfs) prefetchTake(dir *cnode, name string) (qtfsv1.Entry, uint64, bool) {
	p := fs.pf
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.dirs[dir.id]
	if l == nil {
		return qtfsv1.Entry{}, 0, false
	}
	if time.Since(l.at) >= fs.ttl || l.epoch != fs.s.Epoch() {
		delete(p.dirs, dir.id)
		fs.forgetListing(l)
		return qtfsv1.Entry{}, 0, false
	}
	e, ok := l.ents[name]
	if ok {
		delete(l.ents, name)
	}
	return e, l.epoch, ok
}

// prefetchStart lists dir in the background unless it was listed within the TTL.
func (fs *qfs) prefetchStart(dir *cnode) {
	p := fs.pf
	p.mu.Lock()
	if p.inflight[dir.id] || time.Since(p.recent[dir.id]) < fs.ttl {
		p.mu.Unlock()
		return
	}
	p.inflight[dir.id] = true
	p.recent[dir.id] = time.Now()
	if len(p.recent) > 4096 {
		for id, t := range p.recent {
			if time.Since(t) >= fs.ttl && !p.inflight[id] {
				delete(p.recent, id)
				delete(p.ver, id)
			}
		}
	}
	ver := p.ver[dir.id]
	p.mu.Unlock()
	go fs.prefetch(dir, ver)
}

func (fs *qfs) prefetch(dir *cnode, ver uint64) {
	start := time.Now()
	ents, epoch := fs.listDir(dir)
	p := fs.pf
	p.mu.Lock()
	delete(p.inflight, dir.id)
	if ents == nil {
		p.mu.Unlock()
		return
	}
	if p.ver[dir.id] != ver {
		// The directory changed while it was being listed.
		p.mu.Unlock()
		fs.forgetListing(&listing{epoch: epoch, ents: ents})
		return
	}
	l := &listing{at: start, epoch: epoch, ents: ents}
	old := p.dirs[dir.id]
	p.dirs[dir.id] = l
	p.mu.Unlock()
	if old != nil {
		fs.forgetListing(old)
	}
	time.AfterFunc(fs.ttl, func() {
		p.mu.Lock()
		cur := p.dirs[dir.id]
		if cur == l {
			delete(p.dirs, dir.id)
		}
		p.mu.Unlock()
		if cur == l {
			fs.forgetListing(l)
		}
	})
}

// listDir reads one readdirplus reply of dir.
func (fs *qfs) listDir(dir *cnode) (map[string]qtfsv1.Entry, uint64) {
	var epoch uint64
	open := &qtfsv1.Request{Op: qtfsv1.OpOpenDir}
	rep, f, code := fs.rpc(classControl, open, func(e uint64) error {
		epoch = e
		return fs.withNodes(open, dir, nil)(e)
	})
	if !code.Ok() {
		return nil, 0
	}
	f.Release()
	fh := rep.Fh
	rep, f, err := fs.s.callEpoch(epoch, classControl, &qtfsv1.Request{Op: qtfsv1.OpReadDir, Fh: fh, Len: maxPrefetch, Flags: 1}, nil, false)
	var ents map[string]qtfsv1.Entry
	if err == nil {
		if rep.Errno == 0 {
			ents = make(map[string]qtfsv1.Entry, len(rep.Dirents))
			for _, de := range rep.Dirents {
				if de.Node != 0 {
					ents[de.Name] = qtfsv1.Entry{Node: de.Node, Attr: de.Attr}
				}
			}
		}
		f.Release()
	}
	if _, f, err := fs.s.callEpoch(epoch, classControl, &qtfsv1.Request{Op: qtfsv1.OpReleaseDir, Fh: fh}, nil, false); err == nil {
		f.Release()
	}
	return ents, epoch
}

func (fs *qfs) forgetListing(l *listing) {
	for _, e := range l.ents {
		fs.s.queueForget(e.Node, 1, l.epoch)
	}
}

// prefetchDrop forgets the listing of a directory (it may be stale).
func (fs *qfs) prefetchDrop(dirID uint64) {
	if fs.pf == nil {
		return
	}
	p := fs.pf
	p.mu.Lock()
	l := p.dirs[dirID]
	delete(p.dirs, dirID)
	p.ver[dirID]++
	p.recent[dirID] = time.Now() // do not list it again right away
	p.mu.Unlock()
	if l != nil {
		fs.forgetListing(l)
	}
}

// prefetchDropParent drops the listing that may hold n's attributes.
func (fs *qfs) prefetchDropParent(n *cnode) {
	if fs.pf == nil || n == nil {
		return
	}
	fs.nodes.mu.Lock()
	p := n.parent
	fs.nodes.mu.Unlock()
	if p != nil {
		fs.prefetchDrop(p.id)
	}
}
