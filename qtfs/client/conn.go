package client

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/dpu-offload/offload/qtfs/internal/bufpool"
)

// errConnLost is returned for requests whose connection broke before a reply
// arrived; the session retries them once it has reconnected.
var errConnLost = errors.New("qtfs: connection lost")

// bigBufs holds the receive buffers of replies over 64 KiB (read data);
// see package bufpool for why they are not heap buffers.
var bigBufs = bufpool.New(qtfsv1.MaxPayload)

// frame is a received reply; Release returns its buffer.
type frame struct {
	hdr     qtfsv1.Header
	payload []byte
	big     []byte // from bigBufs
	err     error
}

func (f *frame) Release() {
	if f.big != nil {
		bigBufs.Put(f.big)
		f.big = nil
	}
}

// wireConn multiplexes requests over one connection: many requests are in
// flight at once and replies are matched by ID.
type wireConn struct {
	nc       net.Conn
	notify   func(*qtfsv1.Request)
	wmu      sync.Mutex
	mu       sync.Mutex
	ids      *atomic.Uint64 // request IDs, shared by the session's connections
	pending  map[uint64]chan *frame
	err      error
	dead     chan struct{}
	deadOnce sync.Once
}

func newWireConn(nc net.Conn, notify func(*qtfsv1.Request)) *wireConn {
	return &wireConn{nc: nc, notify: notify, ids: new(atomic.Uint64), pending: map[uint64]chan *frame{}, dead: make(chan struct{})}
}

// hello performs the handshake synchronously before the reader starts.
func (c *wireConn) hello(h qtfsv1.Hello, timeout time.Duration) (*qtfsv1.HelloReply, error) {
	c.nc.SetDeadline(time.Now().Add(timeout))
	defer c.nc.SetDeadline(time.Time{})
	body, _, err := qtfsv1.EncodeRequest(nil, &qtfsv1.Request{Op: qtfsv1.OpHello, Hello: h})
	if err != nil {
		return nil, err
	}
	if err := qtfsv1.WriteFrame(c.nc, qtfsv1.Header{Op: qtfsv1.OpHello, ID: 0}, body, nil); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	hdr, p, err := qtfsv1.ReadFrame(c.nc, make([]byte, qtfsv1.HeaderSize), nil)
	if err != nil {
		return nil, fmt.Errorf("read hello reply: %w", err)
	}
	if hdr.Op != qtfsv1.OpHello || hdr.Flags != qtfsv1.FlagReply {
		return nil, fmt.Errorf("unexpected %s frame in handshake", hdr.Op)
	}
	var rep qtfsv1.Reply
	if err := qtfsv1.DecodeReply(hdr.Op, p, &rep); err != nil {
		return nil, err
	}
	if rep.Errno != 0 {
		return nil, fmt.Errorf("server refused handshake: %w", syscall.Errno(rep.Errno))
	}
	return &rep.Hello, nil
}

func (c *wireConn) start() { go c.readLoop() }

func (c *wireConn) fail(err error) {
	c.deadOnce.Do(func() {
		c.mu.Lock()
		c.err = err
		pend := c.pending
		c.pending = nil
		c.mu.Unlock()
		c.nc.Close()
		for _, ch := range pend {
			ch <- &frame{err: errConnLost}
		}
		close(c.dead)
	})
}

func (c *wireConn) readLoop() {
	hdr := make([]byte, qtfsv1.HeaderSize)
	for {
		if _, err := readFull(c.nc, hdr); err != nil {
			c.fail(err)
			return
		}
		h, err := qtfsv1.DecodeHeader(hdr)
		if err != nil {
			c.fail(err)
			return
		}
		f := &frame{hdr: h}
		if h.Len > 64<<10 {
			f.big = bigBufs.Get()
			f.payload = f.big[:h.Len]
		} else {
			f.payload = make([]byte, h.Len)
		}
		if _, err := readFull(c.nc, f.payload); err != nil {
			f.Release()
			c.fail(err)
			return
		}
		if h.Flags&qtfsv1.FlagNotify != 0 {
			req := new(qtfsv1.Request)
			err := qtfsv1.DecodeRequest(h.Op, f.payload, req)
			f.Release()
			if err != nil {
				c.fail(err)
				return
			}
			if c.notify != nil {
				c.notify(req)
			}
			continue
		}
		if h.Flags&qtfsv1.FlagReply == 0 {
			f.Release()
			c.fail(fmt.Errorf("qtfs: server sent a request frame"))
			return
		}
		c.mu.Lock()
		ch := c.pending[h.ID]
		delete(c.pending, h.ID)
		c.mu.Unlock()
		if ch == nil {
			f.Release() // reply to a request that timed out
			continue
		}
		ch <- f
	}
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

var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// send writes req under a new ID and returns the ID and the channel its
// reply arrives on (nil for one-way).
func (c *wireConn) send(req *qtfsv1.Request, oneWay bool) (uint64, chan *frame, error) {
	return c.sendID(req, 0, oneWay)
}

// sendID is send under a given ID (0: a new one). A request sent again after
// a lost connection keeps the ID of its first attempt, so that a server with
// FeatReplay recognises it. The ID is returned even when sending failed.
func (c *wireConn) sendID(req *qtfsv1.Request, id uint64, oneWay bool) (uint64, chan *frame, error) {
	if id == 0 {
		id = c.ids.Add(1)
	}
	var ch chan *frame
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		return id, nil, errConnLost
	}
	if _, busy := c.pending[id]; busy && !oneWay {
		c.mu.Unlock()
		return id, nil, fmt.Errorf("qtfs: request ID %d already in flight", id)
	}
	if !oneWay {
		ch = make(chan *frame, 1)
		c.pending[id] = ch
	}
	c.mu.Unlock()

	bp := bodyBufs.Get().(*[]byte)
	body, data, err := qtfsv1.EncodeRequest((*bp)[:0], req)
	if err != nil {
		c.forget(id)
		return id, nil, err
	}
	flags := uint16(0)
	if oneWay {
		flags = qtfsv1.FlagOneWay
	}
	c.wmu.Lock()
	err = qtfsv1.WriteFrame(c.nc, qtfsv1.Header{Op: req.Op, Flags: flags, ID: id}, body, data)
	c.wmu.Unlock()
	*bp = body[:0]
	bodyBufs.Put(bp)
	if err != nil {
		c.fail(err)
		return id, nil, errConnLost
	}
	return id, ch, nil
}

func (c *wireConn) forget(id uint64) {
	c.mu.Lock()
	if c.pending != nil {
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// abandon is forget for a request whose caller stops waiting (timeout): if
// the reply is already on its way to ch (taken from pending by the reader,
// or failed), it is received and released, so its buffer goes back to the
// pool.
func (c *wireConn) abandon(id uint64, ch chan *frame) {
	c.mu.Lock()
	_, waiting := c.pending[id]
	if waiting {
		delete(c.pending, id)
	}
	c.mu.Unlock()
	if !waiting {
		go func() { (<-ch).Release() }()
	}
}

// socketBuffer lets a whole 1 MiB reply sit in the socket, so the sender does
// not wait for the receiver once per 200 KiB.
const socketBuffer = 4 << 20

// setBuffers enlarges the kernel socket buffers of unix and TCP connections
// (TLS connections wrap a TCP one the dialler sized already).
func setBuffers(nc net.Conn) {
	type buffered interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	if b, ok := nc.(buffered); ok {
		b.SetReadBuffer(socketBuffer)
		b.SetWriteBuffer(socketBuffer)
	}
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok {
		if b, ok := t.NetConn().(buffered); ok {
			b.SetReadBuffer(socketBuffer)
			b.SetWriteBuffer(socketBuffer)
		}
	}
}
