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
	dirty map[string]bool // names this client changed since the listing
}

type prefetcher struct {
	mu       sync.Mutex
	dirs     map[uint64]*listing        // by directory cnode id
	inflight map[uint64]chan struct{}   // closed when the listing lands
	recent   map[uint64]time.Time       // last prefetch start per directory
	ver      map[uint64]uint64          // bumped by every drop: a listing started before is discarded
	pending  map[uint64]map[string]bool // names this client changed while a listing was in flight
}

func newPrefetcher() *prefetcher {
	return &prefetcher{dirs: map[uint64]*listing{}, inflight: map[uint64]chan struct{}{}, recent: map[uint64]time.Time{}, ver: map[uint64]uint64{}, pending: map[uint64]map[string]bool{}}
}

type prefetchResult int

// A listing only ever answers with entries it holds: a name it lacks may
// have been created on the host a moment ago, and a lookup of a name never
// seen before must find it (only the kernel's own negative entries, for names
// it has asked about, are cached).
const (
	prefetchMiss  prefetchResult = iota // ask the server
	prefetchFound                       // entry returned
)

// prefetchTake answers a lookup from a fresh listing with an entry (removed
// from the listing: its server reference now belongs to the node). The
// duration is how long the kernel may cache the answer: what is left of the
// listing's TTL, so nothing is ever staler than one TTL.
func (fs *qfs) prefetchTake(dir *cnode, name string) (qtfsv1.Entry, uint64, prefetchResult, time.Duration) {
	p := fs.pf
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.dirs[dir.id]
	if l == nil {
		return qtfsv1.Entry{}, 0, prefetchMiss, 0
	}
	age := time.Since(l.at)
	if age >= fs.ttl || l.epoch != fs.s.Epoch() {
		delete(p.dirs, dir.id)
		fs.forgetListing(l)
		return qtfsv1.Entry{}, 0, prefetchMiss, 0
	}
	if l.dirty[name] {
		return qtfsv1.Entry{}, 0, prefetchMiss, 0
	}
	if e, ok := l.ents[name]; ok {
		delete(l.ents, name)
		// Taken once: a second lookup of the name goes to the server.
		l.markDirty(name)
		return e, l.epoch, prefetchFound, fs.ttl - age
	}
	return qtfsv1.Entry{}, 0, prefetchMiss, 0
}

func (l *listing) markDirty(name string) {
	if l.dirty == nil {
		l.dirty = map[string]bool{}
	}
	l.dirty[name] = true
}

// prefetchDirty records that this client changed names in a directory: a
// listing in flight is discarded, a stored one stops answering for them.
func (fs *qfs) prefetchDirty(dirID uint64, names ...string) {
	if fs.pf == nil {
		return
	}
	p := fs.pf
	p.mu.Lock()
	if p.inflight[dirID] != nil {
		pd := p.pending[dirID]
		if pd == nil {
			pd = map[string]bool{}
			p.pending[dirID] = pd
		}
		for _, name := range names {
			pd[name] = true
		}
	}
	l := p.dirs[dirID]
	var drop []qtfsv1.Entry
	if l != nil {
		for _, name := range names {
			if e, ok := l.ents[name]; ok {
				drop = append(drop, e)
				delete(l.ents, name)
			}
			l.markDirty(name)
		}
	}
	p.mu.Unlock()
	for _, e := range drop {
		fs.s.queueForget(e.Node, 1, l.epoch)
	}
}

// prefetchStart lists dir in the background unless it was listed within the TTL.
func (fs *qfs) prefetchStart(dir *cnode) {
	p := fs.pf
	p.mu.Lock()
	if p.inflight[dir.id] != nil || time.Since(p.recent[dir.id]) < fs.ttl {
		p.mu.Unlock()
		return
	}
	p.inflight[dir.id] = make(chan struct{})
	p.recent[dir.id] = time.Now()
	if len(p.recent) > 4096 {
		for id, t := range p.recent {
			if time.Since(t) >= fs.ttl && p.inflight[id] == nil {
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
	if ch := p.inflight[dir.id]; ch != nil {
		defer close(ch)
	}
	delete(p.inflight, dir.id)
	dirty := p.pending[dir.id]
	delete(p.pending, dir.id)
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
	l := &listing{at: start, epoch: epoch, ents: ents, dirty: dirty}
	var stale []qtfsv1.Entry
	for name := range dirty {
		if e, ok := ents[name]; ok {
			stale = append(stale, e)
			delete(ents, name)
		}
	}
	for _, e := range stale {
		fs.s.queueForget(e.Node, 1, epoch)
	}
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
	fs.wb.wait()
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

// prefetchDirtyNode marks n's name in its parent's listing (its attributes
// are about to change).
func (fs *qfs) prefetchDirtyNode(n *cnode) {
	if fs.pf == nil || n == nil {
		return
	}
	fs.nodes.mu.Lock()
	p, name := n.parent, n.name
	fs.nodes.mu.Unlock()
	if p != nil {
		fs.prefetchDirty(p.id, name)
	}
}

// prefetchDropParent drops the listing of n's parent (the host changed n).
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

// maxListingWait bounds how long a lookup waits for a listing of its
// directory that is already on its way, rather than asking the host itself.
const maxListingWait = 20 * time.Millisecond

// prefetchWait waits (briefly) for an in-flight listing of dir; it reports
// whether there was one.
func (fs *qfs) prefetchWait(dir *cnode) bool {
	p := fs.pf
	p.mu.Lock()
	ch := p.inflight[dir.id]
	p.mu.Unlock()
	if ch == nil {
		return false
	}
	t := time.NewTimer(maxListingWait)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}
