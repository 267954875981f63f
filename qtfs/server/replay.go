package server

import (
	"sync"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// replayMax bounds the replies a session remembers. A request is sent again
// only right after a reconnect, for a request that was in flight when the
// link dropped (while cut off the client sends nothing), so the remembered
// replies resends need are among the latest ones, as many as the requests
// the client had in flight (the kernel's max_background of 64 plus one per
// blocked caller): far fewer than replayMax.
const replayMax = 4096

// replayCache remembers, by request ID, the replies of a session's
// non-idempotent requests (FeatReplay), so that a request the client sends
// again after a link drop is answered, not executed twice.
type replayCache struct {
	mu   sync.Mutex
	m    map[uint64]*replayEntry
	ring []uint64 // IDs in arrival order, oldest evicted first
	next int
}

type replayEntry struct {
	op      qtfsv1.Op
	done    chan struct{} // closed once payload is set
	payload []byte        // the encoded reply
}

// begin claims id for a request about to be executed. If a request with
// that ID came before (the original of a resend, or a resend that overtook
// its original on another connection), it returns that request's entry and
// dup: wait for done, then answer with its payload.
func (rc *replayCache) begin(id uint64, op qtfsv1.Op) (e *replayEntry, dup bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if e := rc.m[id]; e != nil {
		return e, true
	}
	if rc.m == nil {
		rc.m = make(map[uint64]*replayEntry)
		rc.ring = make([]uint64, replayMax)
	}
	if old := rc.ring[rc.next]; old != 0 {
		delete(rc.m, old)
	}
	rc.ring[rc.next] = id
	rc.next = (rc.next + 1) % len(rc.ring)
	e = &replayEntry{op: op, done: make(chan struct{})}
	rc.m[id] = e
	return e, false
}

// finish records the encoded reply (copied) and wakes duplicates.
func (e *replayEntry) finish(body, data []byte) {
	e.payload = append(append(make([]byte, 0, len(body)+len(data)), body...), data...)
	close(e.done)
}

// replayed reports whether req's reply is remembered for a resend: every
// request that creates or removes a name, changes attributes, takes a
// server reference or handle the client would otherwise never give back
// (lookup, open, opendir), or appends. Reads, idempotent writes at an
// offset and queries are executed again.
func (ss *session) replayed(req *qtfsv1.Request) bool {
	switch req.Op {
	case qtfsv1.OpLookup, qtfsv1.OpSetAttr, qtfsv1.OpSymlink, qtfsv1.OpMknod, qtfsv1.OpMkdir, qtfsv1.OpUnlink,
		qtfsv1.OpRmdir, qtfsv1.OpRename, qtfsv1.OpLink, qtfsv1.OpOpen, qtfsv1.OpCreate, qtfsv1.OpOpenDir,
		qtfsv1.OpSetXattr, qtfsv1.OpRemoveXattr:
		return true
	case qtfsv1.OpWrite:
		f, err := ss.file(req.Fh)
		return err == nil && f.flags&unix.O_APPEND != 0
	}
	return false
}
