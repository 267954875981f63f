package server

import (
	"encoding/binary"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"golang.org/x/sys/unix"
)

// watchMask selects the directory events that change what a client may have
// cached: names (create/delete/move) and attributes or data of children.
const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_ATTRIB | unix.IN_MODIFY | unix.IN_CLOSE_WRITE | unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK

// selfWindow: events about names and inodes this session changed itself are
// not echoed back for this long. The client's attribute TTL (1s) bounds what
// the suppression could hide.
const selfWindow = time.Second

type entryKey struct {
	dir  uint64
	name string
}

// watcher turns inotify events on the directories a session holds into
// invalidation notifications for that session's client.
type watcher struct {
	ss   *session
	f    *os.File
	fd   int
	mu   sync.Mutex
	byWd map[int]*node

	smu       sync.Mutex
	selfEntry map[entryKey]time.Time
	selfIno   map[devIno]time.Time
	lastPrune time.Time
}

// enableNotify starts the session's watcher (once) and watches every
// directory node it already holds. Called with the feature negotiated.
func (ss *session) enableNotify() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.watch.Load() != nil || ss.dead {
		return
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		log.L.WithError(err).Warn("qtfs: inotify unavailable; clients rely on cache timeouts")
		return
	}
	w := &watcher{ss: ss, fd: fd, f: os.NewFile(uintptr(fd), "inotify"), byWd: map[int]*node{},
		selfEntry: map[entryKey]time.Time{}, selfIno: map[devIno]time.Time{}}
	ss.watch.Store(w)
	for _, n := range ss.nodes {
		if n.isDir() {
			w.add(n)
		}
	}
	go w.loop()
}

func (w *watcher) add(n *node) {
	fd, done, err := w.ss.dirFd(n)
	if err != nil {
		return
	}
	wd, err := unix.InotifyAddWatch(w.fd, procPath(fd), watchMask)
	done()
	if err != nil {
		return // e.g. watch limit reached: this directory relies on the TTL
	}
	w.mu.Lock()
	n.wd = wd
	w.byWd[wd] = n
	w.mu.Unlock()
}

func (w *watcher) remove(n *node) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n.wd >= 0 && w.byWd[n.wd] == n {
		delete(w.byWd, n.wd)
		unix.InotifyRmWatch(w.fd, uint32(n.wd))
	}
	n.wd = -1
}

func (w *watcher) close() { w.f.Close() }

// markEntry and markIno record changes made by the session itself.
func (w *watcher) markEntry(dir uint64, name string) {
	if w == nil {
		return
	}
	w.smu.Lock()
	w.selfEntry[entryKey{dir, name}] = time.Now()
	w.smu.Unlock()
}

func (w *watcher) markIno(k devIno) {
	if w == nil {
		return
	}
	w.smu.Lock()
	w.selfIno[k] = time.Now()
	w.smu.Unlock()
}

func (w *watcher) recentEntry(k entryKey) bool {
	w.smu.Lock()
	defer w.smu.Unlock()
	t, ok := w.selfEntry[k]
	return ok && time.Since(t) < selfWindow
}

func (w *watcher) recentIno(k devIno) bool {
	w.smu.Lock()
	defer w.smu.Unlock()
	t, ok := w.selfIno[k]
	return ok && time.Since(t) < selfWindow
}

func (w *watcher) prune() {
	w.smu.Lock()
	defer w.smu.Unlock()
	if time.Since(w.lastPrune) < selfWindow {
		return
	}
	w.lastPrune = time.Now()
	for k, t := range w.selfEntry {
		if time.Since(t) >= selfWindow {
			delete(w.selfEntry, k)
		}
	}
	for k, t := range w.selfIno {
		if time.Since(t) >= selfWindow {
			delete(w.selfIno, k)
		}
	}
}

func (w *watcher) loop() {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		w.prune()
		b := buf[:n]
		for len(b) >= unix.SizeofInotifyEvent {
			wd := int(int32(binary.LittleEndian.Uint32(b[0:])))
			mask := binary.LittleEndian.Uint32(b[4:])
			nameLen := int(binary.LittleEndian.Uint32(b[12:]))
			if unix.SizeofInotifyEvent+nameLen > len(b) {
				break
			}
			name := b[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+nameLen]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			w.event(wd, mask, string(name))
			b = b[unix.SizeofInotifyEvent+nameLen:]
		}
	}
}

func (w *watcher) event(wd int, mask uint32, name string) {
	if mask&unix.IN_Q_OVERFLOW != 0 || name == "" {
		return
	}
	w.mu.Lock()
	dir := w.byWd[wd]
	w.mu.Unlock()
	if dir == nil {
		return
	}
	c := w.ss.anyConn()
	if c == nil {
		return
	}
	ek := entryKey{dir.id, name}
	if w.recentEntry(ek) {
		return
	}
	if mask&(unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO) != 0 {
		c.notify(&qtfsv1.Request{Op: qtfsv1.OpNotifyInvalEntry, Node: dir.id, Name: name})
		return
	}
	// Attributes or data of a child: tell the client about the child's node
	// if it holds one.
	var st unix.Stat_t
	dfd, done, err := w.ss.dirFd(dir)
	if err != nil {
		return
	}
	err = unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	done()
	if err != nil {
		return
	}
	key := devIno{st.Dev, st.Ino}
	if w.recentIno(key) {
		return
	}
	w.ss.mu.Lock()
	child := w.ss.byKey[key]
	w.ss.mu.Unlock()
	if child == nil {
		return
	}
	off := ^uint64(0) // attributes only
	if mask&(unix.IN_MODIFY|unix.IN_CLOSE_WRITE) != 0 {
		off = 0 // and cached data
	}
	c.notify(&qtfsv1.Request{Op: qtfsv1.OpNotifyInvalInode, Node: child.id, Off: off})
}
