package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"
	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
)

// SessionOptions configure the connections to one export.
type SessionOptions struct {
	// Dial opens one connection to the server (transport.Dial on ChannelQtfs).
	Dial   func(ctx context.Context) (net.Conn, error)
	Export string
	// DataConns is the number of connections that carry read/write data, in
	// addition to the control connection (default 2).
	DataConns int
	// Timeout bounds how long a call waits for an unreachable host before it
	// fails with EIO (default 30s).
	Timeout time.Duration
}

type class int

const (
	classControl class = iota
	classData
)

// Session is a set of connections to one export that share the server-side
// handles; it reconnects transparently.
type Session struct {
	opts SessionOptions
	id   [16]byte

	mu         sync.Mutex
	conns      []*wireConn
	ready      chan struct{} // closed while connected
	gen        uint64
	epoch      uint64 // bumped whenever the server lost our handles
	root       qtfsv1.Entry
	features   uint64
	readOnly   bool
	closed     bool
	closedCh   chan struct{}
	reconnects int
	lastErr    string
	connected  time.Time

	rr       atomic.Uint64
	ids      atomic.Uint64 // request IDs: unique in the session (FeatReplay)
	notifyFn atomic.Pointer[func(*qtfsv1.Request)]
	forgets  chan forgetItem

	stats Stats
}

type forgetItem struct {
	f     qtfsv1.Forget
	epoch uint64
}

// Connect dials the server and performs the handshake on every connection.
func Connect(ctx context.Context, opts SessionOptions) (*Session, error) {
	if opts.Dial == nil || opts.Export == "" {
		return nil, errors.New("qtfs: Dial and Export are required")
	}
	if opts.DataConns <= 0 {
		opts.DataConns = 2
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	s := &Session{opts: opts, ready: make(chan struct{}), closedCh: make(chan struct{}), forgets: make(chan forgetItem, 4096)}
	if _, err := rand.Read(s.id[:]); err != nil {
		return nil, err
	}
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	go s.forgetLoop()
	go s.pingLoop()
	return s, nil
}

// SetNotify installs the handler for server-pushed invalidations.
func (s *Session) SetNotify(fn func(*qtfsv1.Request)) { s.notifyFn.Store(&fn) }

func (s *Session) onNotify(req *qtfsv1.Request) {
	if fn := s.notifyFn.Load(); fn != nil {
		(*fn)(req)
	}
}

func (s *Session) connect(ctx context.Context) error {
	n := 1 + s.opts.DataConns
	conns := make([]*wireConn, 0, n)
	var hr *qtfsv1.HelloReply
	fail := func(err error) error {
		for _, c := range conns {
			c.nc.Close()
		}
		return err
	}
	for i := 0; i < n; i++ {
		nc, err := s.opts.Dial(ctx)
		if err != nil {
			return fail(fmt.Errorf("dial qtfs server: %w", err))
		}
		setBuffers(nc)
		c := newWireConn(nc, s.onNotify)
		c.ids = &s.ids
		conns = append(conns, c)
		r, err := c.hello(qtfsv1.Hello{Magic: qtfsv1.Magic, Version: qtfsv1.Version, Features: qtfsv1.FeatAll,
			Session: s.id, Export: s.opts.Export}, 10*time.Second)
		if err != nil {
			return fail(fmt.Errorf("qtfs handshake (export %q): %w", s.opts.Export, err))
		}
		if hr != nil && r.Generation != hr.Generation {
			return fail(errors.New("qtfs: server generation changed during connect"))
		}
		hr = r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fail(errors.New("session closed"))
	}
	if hr.Generation != s.gen {
		s.gen = hr.Generation
		s.epoch++
	}
	s.root, s.features, s.readOnly = hr.Root, hr.Features, hr.ReadOnly
	s.conns = conns
	s.connected = time.Now()
	close(s.ready)
	for _, c := range conns {
		c.start()
		go func(c *wireConn) {
			<-c.dead
			s.lost(c)
		}(c)
	}
	return nil
}

// lost tears down the connection set when one connection fails and starts
// reconnecting.
func (s *Session) lost(c *wireConn) {
	s.mu.Lock()
	found := false
	for _, x := range s.conns {
		if x == c {
			found = true
		}
	}
	if !found || s.closed {
		s.mu.Unlock()
		return
	}
	conns := s.conns
	s.conns = nil
	s.ready = make(chan struct{})
	if c.err != nil {
		s.lastErr = c.err.Error()
	}
	s.mu.Unlock()
	for _, x := range conns {
		x.fail(errConnLost)
	}
	log.L.WithField("export", s.opts.Export).Warnf("qtfs: connection lost (%s), reconnecting", s.lastErr)
	go s.reconnect()
}

func (s *Session) reconnect() {
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-s.closedCh:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := s.connect(ctx)
		cancel()
		if err == nil {
			s.mu.Lock()
			s.reconnects++
			s.mu.Unlock()
			log.L.WithField("export", s.opts.Export).Info("qtfs: reconnected")
			return
		}
		s.mu.Lock()
		s.lastErr = err.Error()
		s.mu.Unlock()
		select {
		case <-s.closedCh:
			return
		case <-time.After(backoff):
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}

// Close drops every connection; calls in progress fail with EIO.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closedCh)
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		c.fail(errors.New("session closed"))
	}
	return nil
}

// Root returns the export root's entry and the current epoch.
func (s *Session) Root() (qtfsv1.Entry, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.root, s.epoch
}

// Epoch changes whenever server-side handles were lost.
func (s *Session) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// Features returns the negotiated feature bits.
func (s *Session) Features() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.features
}

// ReadOnly reports whether the export is read-only.
func (s *Session) ReadOnly() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readOnly
}

// call sends req and waits for its reply. prep, if set, fills in the
// server-side IDs valid for the epoch of the connections used (so a request
// never carries handles from an earlier server session). The returned frame
// must be released when the reply's Data is no longer needed.
func (s *Session) call(cancel <-chan struct{}, cls class, req *qtfsv1.Request, prep func(epoch uint64) error, noTimeout bool) (*qtfsv1.Reply, *frame, error) {
	if cancel != nil {
		return s.callInterruptible(cancel, cls, req, prep)
	}
	return s.callEpoch(0, cls, req, prep, noTimeout)
}

// callInterruptible is for requests that may wait indefinitely (setlkw):
// when the caller is interrupted, the server is told to stop waiting, and
// the reply (EINTR, or success if the lock was granted meanwhile) is returned.
func (s *Session) callInterruptible(cancel <-chan struct{}, cls class, req *qtfsv1.Request, prep func(epoch uint64) error) (*qtfsv1.Reply, *frame, error) {
	var id uint64 // kept across attempts (FeatReplay)
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, nil, syscall.EIO
		}
		conns, ready, epoch := s.conns, s.ready, s.epoch
		s.mu.Unlock()
		if conns == nil {
			select {
			case <-ready:
				continue
			case <-cancel:
				return nil, nil, syscall.EINTR
			case <-s.closedCh:
				return nil, nil, syscall.EIO
			}
		}
		if prep != nil {
			if err := prep(epoch); err != nil {
				if err == errConnLost {
					continue
				}
				return nil, nil, err
			}
		}
		c := conns[0]
		var ch chan *frame
		var err error
		id, ch, err = c.sendID(req, id, false)
		if err == errConnLost {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		var f *frame
		select {
		case f = <-ch:
		case <-cancel:
			c.send(&qtfsv1.Request{Op: qtfsv1.OpInterrupt, Off: id}, true)
			select {
			case f = <-ch:
			case <-s.closedCh:
				return nil, nil, syscall.EIO
			}
		case <-s.closedCh:
			return nil, nil, syscall.EIO
		}
		if f.err == errConnLost {
			// The server dropped the wait with the connection.
			select {
			case <-cancel:
				return nil, nil, syscall.EINTR
			default:
			}
			continue
		}
		rep := new(qtfsv1.Reply)
		if err := qtfsv1.DecodeReply(req.Op, f.payload, rep); err != nil || f.hdr.Op != req.Op {
			f.Release()
			c.fail(fmt.Errorf("malformed reply: %v", err))
			return nil, nil, syscall.EIO
		}
		return rep, f, nil
	}
}

// callEpoch is call pinned to one epoch (0: any): it fails with errConnLost
// instead of using connections of another epoch.
func (s *Session) callEpoch(want uint64, cls class, req *qtfsv1.Request, prep func(epoch uint64) error, noTimeout bool) (*qtfsv1.Reply, *frame, error) {
	start := time.Now()
	st := &s.stats.ops[req.Op]
	s.stats.inflight.Add(1)
	defer s.stats.inflight.Add(-1)
	rep, f, err := s.doCall(want, cls, req, prep, noTimeout, start)
	st.record(time.Since(start), err != nil || (rep != nil && rep.Errno != 0))
	return rep, f, err
}

func (s *Session) doCall(want uint64, cls class, req *qtfsv1.Request, prep func(epoch uint64) error, noTimeout bool, start time.Time) (*qtfsv1.Reply, *frame, error) {
	deadline := start.Add(s.opts.Timeout)
	// A request cut by a lost connection is sent again under the same ID:
	// a server with FeatReplay then answers it from the reply it recorded if
	// it had executed it, instead of executing a create or unlink twice.
	var id uint64
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, nil, syscall.EIO
		}
		conns, ready, epoch := s.conns, s.ready, s.epoch
		s.mu.Unlock()
		if want != 0 && epoch != want {
			return nil, nil, errConnLost
		}
		if conns == nil {
			if err := waitUntil(ready, deadline, s.closedCh); err != nil {
				return nil, nil, err
			}
			continue
		}
		if prep != nil {
			if err := prep(epoch); err != nil {
				if err == errConnLost {
					continue
				}
				return nil, nil, err
			}
		}
		c := conns[0]
		if cls == classData && len(conns) > 1 {
			c = conns[1+int(s.rr.Add(1)%uint64(len(conns)-1))]
		}
		var ch chan *frame
		var err error
		id, ch, err = c.sendID(req, id, false)
		if err == errConnLost {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		var f *frame
		if noTimeout {
			select {
			case f = <-ch:
			case <-s.closedCh:
				return nil, nil, syscall.EIO
			}
		} else {
			t := time.NewTimer(time.Until(deadline))
			select {
			case f = <-ch:
				t.Stop()
			case <-t.C:
				c.abandon(id, ch)
				c.fail(errors.New("request timed out"))
				return nil, nil, syscall.EIO
			}
		}
		if f.err == errConnLost {
			if time.Now().After(deadline) && !noTimeout {
				return nil, nil, syscall.EIO
			}
			continue
		}
		rep := new(qtfsv1.Reply)
		if err := qtfsv1.DecodeReply(req.Op, f.payload, rep); err != nil || f.hdr.Op != req.Op {
			f.Release()
			log.L.WithError(err).Warnf("qtfs: malformed %s reply", req.Op)
			c.fail(fmt.Errorf("malformed reply: %v", err))
			return nil, nil, syscall.EIO
		}
		return rep, f, nil
	}
}

func waitUntil(ready chan struct{}, deadline time.Time, closed chan struct{}) error {
	d := time.Until(deadline)
	if d <= 0 {
		return syscall.EIO
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-t.C:
		return syscall.EIO
	case <-closed:
		return syscall.EIO
	}
}

// queueForget drops n server references to node (batched, one-way).
func (s *Session) queueForget(node, n, epoch uint64) {
	select {
	case s.forgets <- forgetItem{qtfsv1.Forget{Node: node, N: n}, epoch}:
	case <-s.closedCh:
	}
}

func (s *Session) forgetLoop() {
	var batch []qtfsv1.Forget
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		s.mu.Lock()
		conns := s.conns
		s.mu.Unlock()
		if conns != nil {
			conns[0].send(&qtfsv1.Request{Op: qtfsv1.OpForget, Forgets: batch}, true)
		}
		batch = batch[:0]
	}
	for {
		select {
		case <-s.closedCh:
			return
		case it := <-s.forgets:
			if it.epoch == s.Epoch() {
				batch = append(batch, it.f)
			}
			if len(batch) >= 1024 {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// pingLoop detects a dead link while the mount is idle.
func (s *Session) pingLoop() {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.closedCh:
			return
		case <-t.C:
		}
		s.mu.Lock()
		up := s.conns != nil
		s.mu.Unlock()
		if up {
			if _, f, err := s.call(nil, classControl, &qtfsv1.Request{Op: qtfsv1.OpPing}, nil, false); err == nil {
				f.Release()
			}
		}
	}
}
