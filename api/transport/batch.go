package transport

import (
	"crypto/tls"
	"net"
	"sync"
)

// tlsConn is what Dial and the listeners return under mTLS: a *tls.Conn
// whose large writes leave in few system calls.
//
// crypto/tls hands every record (at most 16 KiB of data) to the socket with
// its own write(2), so a 1 MiB Write costs 64 system calls and 64 trips
// through the TCP stack. Here a Write larger than one record corks the
// socket underneath: the encrypted records are gathered in a buffer and
// written in batchSize pieces, and the last piece before Write returns, so
// a Write still puts all its bytes on the socket before it returns. Small
// writes go straight through.
type tlsConn struct {
	*tls.Conn
	raw *corkConn
	wmu sync.Mutex // one corked Write at a time
}

// maxRecordData is the most data one TLS record carries.
const maxRecordData = 16 << 10

// batchSize is the largest piece a corked Write gathers before writing it.
const batchSize = 256 << 10

var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, batchSize); return &b }}

func newTLSConn(tc *tls.Conn, raw *corkConn) net.Conn { return &tlsConn{Conn: tc, raw: raw} }

func (c *tlsConn) Write(p []byte) (int, error) {
	if len(p) <= maxRecordData {
		return c.Conn.Write(p)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.raw.cork()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.uncork(); err == nil {
		err = ferr
	}
	return n, err
}

// WriteBuffers writes bufs in order as one corked Write, without joining
// them (a frame header and its payload, say).
func (c *tlsConn) WriteBuffers(bufs [][]byte) (int64, error) {
	var total int64
	for _, b := range bufs {
		total += int64(len(b))
	}
	if total <= maxRecordData || len(bufs) == 1 {
		var n int64
		for _, b := range bufs {
			m, err := c.Write(b)
			n += int64(m)
			if err != nil {
				return n, err
			}
		}
		return n, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.raw.cork()
	var n int64
	var err error
	for _, b := range bufs {
		var m int
		m, err = c.Conn.Write(b)
		n += int64(m)
		if err != nil {
			break
		}
	}
	if ferr := c.raw.uncork(); err == nil {
		err = ferr
	}
	return n, err
}

// NetConn returns the socket under the TLS session (for socket options;
// reading or writing it corrupts the session).
func (c *tlsConn) NetConn() net.Conn { return c.raw.Conn }

// corkConn is the socket under a tlsConn. While corked, writes (crypto/tls
// writes one record at a time, in order, under its own lock) are appended
// to a buffer that is written out when it fills and at uncork. A failed
// write is sticky: the TLS stream is broken from then on.
type corkConn struct {
	net.Conn
	mu  sync.Mutex
	buf *[]byte // non-nil while corked
	err error
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.buf == nil {
		n, err := c.Conn.Write(p)
		if err != nil {
			c.err = err
		}
		return n, err
	}
	if len(*c.buf)+len(p) > cap(*c.buf) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) > cap(*c.buf) {
		n, err := c.Conn.Write(p)
		if err != nil {
			c.err = err
		}
		return n, err
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

func (c *corkConn) flushLocked() error {
	if len(*c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	if err != nil {
		c.err = err
	}
	return err
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.buf = batchBufs.Get().(*[]byte)
	c.mu.Unlock()
}

func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.err
	if err == nil {
		err = c.flushLocked()
	}
	*c.buf = (*c.buf)[:0]
	batchBufs.Put(c.buf)
	c.buf = nil
	return err
}
