package server

import (
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/dpu-offload/offload/qtfs/internal/bufpool"
)

// maxInflight bounds the requests one connection may have in progress; the
// reader stops reading until one finishes, which pushes back on the client
// through the socket buffer.
const maxInflight = 64

const helloTimeout = 10 * time.Second

type conn struct {
	srv  *Server
	nc   net.Conn
	sess *session

	replay bool // FeatReplay negotiated: remember replies of non-idempotent requests

	wmu sync.Mutex

	imu     sync.Mutex
	waiters map[uint64]chan struct{} // setlkw requests by ID, closed on interrupt
}

// bigBufs holds request payloads over 64 KiB (write data) and read buffers;
// see package bufpool for why they are not heap buffers.
var bigBufs = bufpool.New(qtfsv1.MaxPayload)

func (c *conn) serve() {
	defer c.srv.detach(c)
	defer c.nc.Close()
	setBuffers(c.nc)
	l := log.L.WithField("remote", c.nc.RemoteAddr().String())
	hdr := make([]byte, qtfsv1.HeaderSize)

	c.nc.SetReadDeadline(time.Now().Add(helloTimeout))
	h, p, err := qtfsv1.ReadFrame(c.nc, hdr, nil)
	if err != nil {
		l.WithError(err).Warn("qtfs: handshake read failed")
		return
	}
	c.nc.SetReadDeadline(time.Time{})
	if err := c.handshake(h, p); err != nil {
		l.WithError(err).Warn("qtfs: handshake refused")
		return
	}

	sem := make(chan struct{}, maxInflight)
	for {
		h, err := c.readHeader(hdr)
		if err != nil {
			if err != errClosed {
				l.WithError(err).Warn("qtfs: bad frame, closing connection")
			}
			return
		}
		var big []byte
		var buf []byte
		if h.Len > 64<<10 {
			big = bigBufs.Get()
			buf = big[:h.Len]
		} else {
			buf = make([]byte, h.Len)
		}
		if _, err := readFull(c.nc, buf); err != nil {
			bigBufs.Put(big)
			return
		}
		if h.Flags&(qtfsv1.FlagReply|qtfsv1.FlagNotify) != 0 || h.Op == qtfsv1.OpHello {
			bigBufs.Put(big)
			l.Warnf("qtfs: unexpected %s frame from client, closing connection", h.Op)
			c.sendErr(h, syscall.EPROTO)
			return
		}
		req := new(qtfsv1.Request)
		if err := qtfsv1.DecodeRequest(h.Op, buf, req); err != nil {
			bigBufs.Put(big)
			l.WithError(err).Warn("qtfs: malformed request, closing connection")
			c.sendErr(h, syscall.EPROTO)
			return
		}
		if req.Op == qtfsv1.OpInterrupt {
			bigBufs.Put(big)
			c.interrupt(req.Off)
			continue
		}
		var intr chan struct{}
		if req.Op == qtfsv1.OpSetLkw {
			intr = c.addWaiter(h.ID)
		}
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			var re *replayEntry
			if c.replay && h.Flags&qtfsv1.FlagOneWay == 0 && c.sess.replayed(req) {
				var dup bool
				if re, dup = c.sess.replies.begin(h.ID, h.Op); dup {
					bigBufs.Put(big)
					c.replayReply(h, re)
					return
				}
			}
			var rep *qtfsv1.Reply
			var release func()
			if intr != nil {
				rep, release = c.sess.handleInterruptible(req, intr)
				c.dropWaiter(h.ID)
			} else {
				rep, release = c.sess.handle(req)
			}
			bigBufs.Put(big)
			if h.Flags&qtfsv1.FlagOneWay != 0 {
				if release != nil {
					release()
				}
				return
			}
			c.replyRecord(h, rep, release, re)
		}()
	}
}

var errClosed = fmt.Errorf("connection closed")

func (c *conn) readHeader(hdr []byte) (qtfsv1.Header, error) {
	if _, err := readFull(c.nc, hdr); err != nil {
		return qtfsv1.Header{}, errClosed
	}
	h, err := qtfsv1.DecodeHeader(hdr)
	if err != nil {
		// Answer with EPROTO under the request ID so the client learns why.
		c.sendErr(qtfsv1.Header{ID: leUint64(hdr[8:]), Op: qtfsv1.OpPing}, syscall.EPROTO)
	}
	return h, err
}

func leUint64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func readFull(nc net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := nc.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (c *conn) handshake(h qtfsv1.Header, p []byte) error {
	if h.Op != qtfsv1.OpHello || h.Flags != 0 {
		c.sendErr(h, syscall.EPROTO)
		return fmt.Errorf("first frame is %s, not hello", h.Op)
	}
	var req qtfsv1.Request
	if err := qtfsv1.DecodeRequest(h.Op, p, &req); err != nil {
		c.sendErr(h, syscall.EPROTO)
		return err
	}
	hello := req.Hello
	if hello.Magic != qtfsv1.Magic {
		c.sendErr(h, syscall.EPROTO)
		return fmt.Errorf("bad magic %#x", hello.Magic)
	}
	if hello.Version < 1 {
		c.sendErr(h, syscall.EPROTONOSUPPORT)
		return fmt.Errorf("unsupported version %d", hello.Version)
	}
	exp := c.srv.exports[hello.Export]
	if exp == nil {
		c.sendErr(h, syscall.ENOENT)
		return fmt.Errorf("unknown export %q", hello.Export)
	}
	ss, err := c.srv.attach(c, hello.Session, exp)
	if err != nil {
		c.sendErr(h, syscall.EINVAL)
		return err
	}
	c.sess = ss
	root, err := ss.rootEntry()
	if err != nil {
		c.sendErr(h, errno(err))
		return err
	}
	feats := hello.Features & qtfsv1.FeatAll
	if c.srv.cfg.DisableNotify {
		feats &^= qtfsv1.FeatNotify
	}
	if feats&qtfsv1.FeatNotify != 0 {
		ss.enableNotify()
	}
	c.replay = feats&qtfsv1.FeatReplay != 0
	rep := &qtfsv1.Reply{Hello: qtfsv1.HelloReply{
		Version: qtfsv1.Version, Features: feats, Generation: ss.gen, Root: root, ReadOnly: exp.ReadOnly,
	}}
	c.reply(h, rep)
	log.L.WithField("export", exp.Name).WithField("remote", c.nc.RemoteAddr().String()).Info("qtfs: client connected")
	return nil
}

func (c *conn) sendErr(h qtfsv1.Header, e syscall.Errno) {
	op := h.Op
	if !op.Valid() {
		op = qtfsv1.OpPing
	}
	c.reply(qtfsv1.Header{Op: op, ID: h.ID}, &qtfsv1.Reply{Errno: uint32(e)})
}

var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func (c *conn) reply(h qtfsv1.Header, rep *qtfsv1.Reply) { c.replyRecord(h, rep, nil, nil) }

// replyRecord writes rep and then calls release (returns read buffers to
// their pool once the data is on the socket). With re, the encoded reply is
// remembered first, for a resend of the request.
func (c *conn) replyRecord(h qtfsv1.Header, rep *qtfsv1.Reply, release func(), re *replayEntry) {
	bp := bodyBufs.Get().(*[]byte)
	body, data, err := qtfsv1.EncodeReply((*bp)[:0], h.Op, rep)
	if err != nil {
		body, data, _ = qtfsv1.EncodeReply((*bp)[:0], h.Op, &qtfsv1.Reply{Errno: uint32(syscall.EIO)})
	}
	if re != nil {
		re.finish(body, data)
	}
	c.wmu.Lock()
	err = qtfsv1.WriteFrame(c.nc, qtfsv1.Header{Op: h.Op, Flags: qtfsv1.FlagReply, ID: h.ID}, body, data)
	c.wmu.Unlock()
	if cap(body) <= 1<<20 {
		*bp = body[:0]
		bodyBufs.Put(bp)
	}
	if release != nil {
		release()
	}
	if err != nil {
		c.nc.Close()
	}
}

// replayReply answers a request whose ID the session has seen with the reply
// of its first execution, waiting for that execution to finish.
func (c *conn) replayReply(h qtfsv1.Header, re *replayEntry) {
	<-re.done
	if re.op != h.Op {
		// An ID reused for another request: the client broke the rule.
		c.sendErr(h, syscall.EPROTO)
		return
	}
	c.wmu.Lock()
	err := qtfsv1.WriteFrame(c.nc, qtfsv1.Header{Op: h.Op, Flags: qtfsv1.FlagReply, ID: h.ID}, re.payload, nil)
	c.wmu.Unlock()
	if err != nil {
		c.nc.Close()
	}
}

// notify sends an unsolicited invalidation.
func (c *conn) notify(req *qtfsv1.Request) error {
	body, _, err := qtfsv1.EncodeRequest(nil, req)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer c.nc.SetWriteDeadline(time.Time{})
	return qtfsv1.WriteFrame(c.nc, qtfsv1.Header{Op: req.Op, Flags: qtfsv1.FlagNotify}, body, nil)
}

const socketBuffer = 4 << 20

// setBuffers enlarges the socket buffers (see the client's setBuffers).
func setBuffers(nc net.Conn) {
	type buffered interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = t.NetConn()
	}
	if b, ok := nc.(buffered); ok {
		b.SetReadBuffer(socketBuffer)
		b.SetWriteBuffer(socketBuffer)
	}
}

func (c *conn) addWaiter(id uint64) chan struct{} {
	c.imu.Lock()
	defer c.imu.Unlock()
	if c.waiters == nil {
		c.waiters = map[uint64]chan struct{}{}
	}
	ch := make(chan struct{})
	c.waiters[id] = ch
	return ch
}

func (c *conn) dropWaiter(id uint64) {
	c.imu.Lock()
	defer c.imu.Unlock()
	delete(c.waiters, id)
}

func (c *conn) interrupt(id uint64) {
	c.imu.Lock()
	defer c.imu.Unlock()
	if ch, ok := c.waiters[id]; ok {
		close(ch)
		delete(c.waiters, id)
	}
}
