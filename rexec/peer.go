package rexec

import (
	"crypto/tls"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// peerName describes who is on the other end of conn for the audit log: the
// certificate subject for mTLS, the process credentials for a unix socket,
// otherwise the remote address.
func peerName(conn net.Conn) string {
	switch c := conn.(type) {
	case interface{ ConnectionState() tls.ConnectionState }:
		st := c.ConnectionState()
		if len(st.PeerCertificates) > 0 {
			return fmt.Sprintf("tls:%s@%s", st.PeerCertificates[0].Subject.CommonName, conn.RemoteAddr())
		}
	case *net.UnixConn:
		raw, err := c.SyscallConn()
		if err == nil {
			var cred *unix.Ucred
			_ = raw.Control(func(fd uintptr) {
				cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			})
			if err == nil && cred != nil {
				return fmt.Sprintf("unix:pid=%d,uid=%d", cred.Pid, cred.Uid)
			}
		}
	}
	return fmt.Sprintf("%s:%s", conn.RemoteAddr().Network(), conn.RemoteAddr())
}

// closeWrite half-closes conn so the peer reads EOF while the other direction
// stays open. unix, tcp, tls and vsock connections all implement it.
func closeWrite(conn net.Conn) error {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return conn.Close()
}
