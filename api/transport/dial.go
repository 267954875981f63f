package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/containerd/log"
	"github.com/mdlayher/vsock"
)

// Dial connects to addr, authenticates with sec and opens channel. The
// returned conn is the underlying connection (a TLS connection under mTLS),
// ready for the channel's own protocol.
func Dial(ctx context.Context, addr Address, sec Security, channel string) (net.Conn, error) {
	preface, err := AppendPreface(nil, channel)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	var conn net.Conn
	switch addr.Network {
	case NetworkUnix:
		var d net.Dialer
		conn, err = d.DialContext(ctx, "unix", addr.Path)
	case NetworkTCP:
		if !sec.hasTLS() && !sec.Insecure {
			return nil, fmt.Errorf("dial %s: TCP needs mTLS (ca, cert, key) or an explicit insecure setting", addr)
		}
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", net.JoinHostPort(addr.Host, fmt.Sprint(addr.Port)))
	case NetworkVsock:
		conn, err = dialVsock(ctx, addr)
	default:
		return nil, fmt.Errorf("dial: unknown network %q", addr.Network)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if sec.hasTLS() {
		conf, err := sec.ClientTLS(addr.Host)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		raw := &corkConn{Conn: conn}
		tc := tls.Client(raw, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("dial %s: TLS handshake: %w", addr, err)
		}
		conn = newTLSConn(tc, raw)
	} else if addr.Network == NetworkTCP {
		log.G(ctx).Warnf("INSECURE: connecting to %s without authentication or encryption", addr)
	}
	if _, err := conn.Write(preface); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dial %s: write preface: %w", addr, err)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

func dialVsock(ctx context.Context, addr Address) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := vsock.Dial(addr.CID, addr.Port, nil)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// CloseWrite half-closes c, so the peer reads EOF while c can still read.
func CloseWrite(c net.Conn) error {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("%T cannot half-close", c)
	}
	return cw.CloseWrite()
}
