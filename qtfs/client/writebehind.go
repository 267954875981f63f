package client

import (
	"sync"
	"syscall"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Write-behind: with --cache=auto a write(2) to a regular file is answered
// as soon as its data is copied, and goes to the host in the background, so
// a program writing a file in small pieces (tar writes 10 KiB records) pays
// one round trip for the file instead of one per piece. POSIX allows this as
// long as nothing can tell: every operation that could observe the file on
// the host (read, getattr, setattr, lookup, lseek, fallocate, locks, open,
// link, copy_file_range) first waits until the node's writes are done;
// overlapping writes are issued in order; and close (FLUSH) and fsync wait
// for them and report the first error, which also fails later writes — as
// NFS reports write errors at close, and a local file system at fsync.
// Appending, O_SYNC/O_DSYNC/O_DIRECT and --cache=strict/none writes stay
// synchronous.

const (
	maxPendingWrites = 16      // per node
	maxPendingBytes  = 8 << 20 // per node
)

type wrange struct {
	off, end uint64
	seq      uint64 // order of start, for barriers that wait only for earlier writes
}

type pendingWrites struct {
	mu     sync.Mutex
	cond   *sync.Cond
	n      int
	bytes  int
	ranges map[*wrange]struct{}
	seq    uint64        // writes started
	err    syscall.Errno // first failure, until reported
}

// pendingUpTo reports whether a write started at or before mark is in flight.
func (p *pendingWrites) pendingUpTo(mark uint64) bool {
	for r := range p.ranges {
		if r.seq <= mark {
			return true
		}
	}
	return false
}

func (p *pendingWrites) init() {
	if p.cond == nil {
		p.cond = sync.NewCond(&p.mu)
		p.ranges = map[*wrange]struct{}{}
	}
}

func (p *pendingWrites) overlaps(r wrange) bool {
	for o := range p.ranges {
		if r.off < o.end && o.off < r.end {
			return true
		}
	}
	return false
}

// asyncWrite reports whether writes through f may be written behind.
func (fs *qfs) asyncWrite(f *cfile) bool {
	const syncFlags = syscall.O_APPEND | syscall.O_SYNC | syscall.O_DSYNC | syscall.O_DIRECT
	return fs.cache == CacheAuto && !f.dir && f.flags&syncFlags == 0
}

// writeBehind starts a write of data at off and returns at once (after
// waiting for overlapping or too many pending writes of the node).
func (fs *qfs) writeBehind(f *cfile, off uint64, data []byte) fuse.Status {
	p := &f.node.writes
	r := &wrange{off: off, end: off + uint64(len(data))}
	p.mu.Lock()
	p.init()
	for p.err == 0 && (p.overlaps(*r) || p.n >= maxPendingWrites || (p.n > 0 && p.bytes+len(data) > maxPendingBytes)) {
		p.cond.Wait()
	}
	if p.err != 0 {
		p.mu.Unlock()
		return fuse.Status(p.err)
	}
	p.n++
	p.bytes += len(data)
	p.seq++
	r.seq = p.seq
	p.ranges[r] = struct{}{}
	p.mu.Unlock()
	gseq := fs.wb.start()
	buf := append([]byte(nil), data...)
	go func() {
		req := &qtfsv1.Request{Op: qtfsv1.OpWrite, Off: off, Data: buf}
		rep, fr, code := fs.rpc(classData, req, fs.withFh(req, f))
		if code.Ok() {
			fr.Release()
			if rep.N != uint64(len(buf)) {
				code = fuse.Status(syscall.EIO) // a short write to a regular file: out of space
			}
		}
		p.mu.Lock()
		p.n--
		p.bytes -= len(buf)
		delete(p.ranges, r)
		if !code.Ok() && p.err == 0 {
			p.err = syscall.Errno(code)
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		fs.wb.done(gseq)
	}()
	return fuse.OK
}

// waitWrites waits until the writes of n started before the call are done
// (later ones do not hold it up: a steady writer must not starve a stat)
// and returns (and clears) the first error of n's writes if report is set.
func (fs *qfs) waitWrites(n *cnode, report bool) fuse.Status {
	if n == nil {
		return fuse.OK
	}
	p := &n.writes
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cond == nil {
		return fuse.OK
	}
	for mark := p.seq; p.pendingUpTo(mark); {
		p.cond.Wait()
	}
	if report && p.err != 0 {
		err := p.err
		p.err = 0
		return fuse.Status(err)
	}
	return fuse.OK
}

// allWrites tracks the mount's writes in flight. Replies that carry
// attributes of nodes not named in the request (lookup, readdirplus) must
// not be asked for while a write the kernel already saw answered could still
// change them: the kernel would take their size for the truth.
type allWrites struct {
	mu      sync.Mutex
	cond    *sync.Cond
	seq     uint64
	pending map[uint64]struct{}
}

func (w *allWrites) start() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cond == nil {
		w.cond = sync.NewCond(&w.mu)
		w.pending = map[uint64]struct{}{}
	}
	w.seq++
	w.pending[w.seq] = struct{}{}
	return w.seq
}

func (w *allWrites) done(seq uint64) {
	w.mu.Lock()
	delete(w.pending, seq)
	w.cond.Broadcast()
	w.mu.Unlock()
}

// wait waits for the writes started before the call (not for later ones).
func (w *allWrites) wait() {
	w.mu.Lock()
	defer w.mu.Unlock()
	mark := w.seq
	for {
		earlier := false
		for s := range w.pending {
			if s <= mark {
				earlier = true
				break
			}
		}
		if !earlier {
			return
		}
		w.cond.Wait()
	}
}
