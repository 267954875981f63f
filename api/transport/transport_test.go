package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAddress(t *testing.T) {
	good := map[string]Address{
		"unix:///run/offload/agent.sock": {Network: NetworkUnix, Path: "/run/offload/agent.sock"},
		"tcp://192.0.2.1:7000":           {Network: NetworkTCP, Host: "192.0.2.1", Port: 7000},
		"tcp://[::1]:7000":               {Network: NetworkTCP, Host: "::1", Port: 7000},
		"vsock://3:1024":                 {Network: NetworkVsock, CID: 3, Port: 1024},
	}
	for s, want := range good {
		got, err := ParseAddress(s)
		if err != nil || got != want {
			t.Errorf("ParseAddress(%q) = %+v, %v; want %+v", s, got, err, want)
		}
		if got.String() != s {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), s)
		}
	}
	bad := map[string]string{
		"":                                    "want unix",
		"/run/x.sock":                         "want unix",
		"unix://relative.sock":                "absolute",
		"tcp://192.0.2.1":                     "missing port",
		"tcp://:7000":                         "missing host",
		"tcp://192.0.2.1:0":                   "bad port",
		"tcp://192.0.2.1:7000/x":              "want tcp",
		"vsock://x:1":                         "bad CID",
		"vsock://3":                           "want vsock",
		"http://192.0.2.1:80":                 "unknown scheme",
		"unix:///" + strings.Repeat("a", 120): "longer than",
	}
	for s, want := range bad {
		_, err := ParseAddress(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAddress(%q) error = %v, want it to mention %q", s, err, want)
		}
	}
}

func TestPrefaceRoundTrip(t *testing.T) {
	b, err := AppendPreface(nil, ChannelQtfs)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(append(b, "payload"...))
	name, err := ReadPreface(r)
	if err != nil || name != ChannelQtfs {
		t.Fatalf("ReadPreface = %q, %v", name, err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "payload" {
		t.Fatalf("ReadPreface consumed past the preface: rest %q", rest)
	}
	for _, bad := range []string{"", "UPPER", strings.Repeat("a", 33), "a/b"} {
		if _, err := AppendPreface(nil, bad); !errors.Is(err, ErrBadPreface) {
			t.Errorf("AppendPreface(%q) = %v, want ErrBadPreface", bad, err)
		}
	}
}

func FuzzReadPreface(f *testing.F) {
	ok, _ := AppendPreface(nil, ChannelRuntime)
	f.Add(ok)
	f.Add([]byte("OFLD\x01\x00"))
	f.Add([]byte("OFLD\x02\x04qtfs"))
	f.Add([]byte("OFLD\x01\xffqtfs"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		name, err := ReadPreface(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadPreface) {
				t.Fatalf("error %v is not ErrBadPreface", err)
			}
			return
		}
		if validChannel(name) != nil {
			t.Fatalf("accepted invalid channel %q", name)
		}
		again, err := AppendPreface(nil, name)
		if err != nil || !bytes.HasPrefix(data, again) {
			t.Fatalf("accepted preface does not round-trip: %q vs %q", data, again)
		}
	})
}

// echoServe answers every conn on l by echoing what it reads, prefixed with
// the channel name, until EOF, then closing.
func echoServe(l net.Listener, name string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.Write([]byte(name + ":"))
			io.Copy(c, c)
		}()
	}
}

// exchange writes msg, half-closes and reads the whole answer.
func exchange(c net.Conn, msg string) (string, error) {
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	if err := CloseWrite(c); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func roundTrip(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	got, err := exchange(c, msg)
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	return got
}

// refused asserts the server never answers on c: a peer it rejected may see
// an error at any step (TLS 1.3 reports a rejected client certificate only
// after the client's handshake has finished) or a plain close.
func refused(t *testing.T, c net.Conn) {
	t.Helper()
	if got, _ := exchange(c, "x"); got != "" {
		t.Fatalf("rejected peer got an answer %q", got)
	}
}

func startMux(t *testing.T, addr Address, sec Security) *Mux {
	t.Helper()
	m, err := Listen(context.Background(), addr, sec)
	if err != nil {
		t.Fatal(err)
	}
	go echoServe(m.Channel(ChannelRuntime), ChannelRuntime)
	go echoServe(m.Channel(ChannelStdio), ChannelStdio)
	done := make(chan error, 1)
	go func() { done <- m.Serve() }()
	t.Cleanup(func() {
		m.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return m
}

func TestUnixMuxRoutesChannels(t *testing.T) {
	dir := t.TempDir()
	addr := Address{Network: NetworkUnix, Path: filepath.Join(dir, "sub", "agent.sock")}
	startMux(t, addr, Security{})
	fi, err := os.Stat(addr.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode %v, want socket 0600", fi.Mode())
	}
	ctx := context.Background()
	for _, ch := range []string{ChannelRuntime, ChannelStdio} {
		c, err := Dial(ctx, addr, Security{}, ch)
		if err != nil {
			t.Fatal(err)
		}
		if got := roundTrip(t, c, "hello"); got != ch+":hello" {
			t.Errorf("channel %s got %q", ch, got)
		}
	}
	// A channel nobody serves is closed without a byte.
	c, err := Dial(ctx, addr, Security{}, ChannelQtfs)
	if err != nil {
		t.Fatal(err)
	}
	refused(t, c)
	// Garbage instead of a preface is closed; the mux keeps serving.
	raw, err := net.Dial("unix", addr.Path)
	if err != nil {
		t.Fatal(err)
	}
	refused(t, raw)
	c, err = Dial(ctx, addr, Security{}, ChannelRuntime)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, "again"); got != "runtime:again" {
		t.Errorf("after bad peer got %q", got)
	}
}

func TestUnixListenRefusesLiveSocketAndNonSocket(t *testing.T) {
	dir := t.TempDir()
	addr := Address{Network: NetworkUnix, Path: filepath.Join(dir, "a.sock")}
	startMux(t, addr, Security{})
	if _, err := Listen(context.Background(), addr, Security{}); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Fatalf("second listen: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o644)
	if _, err := Listen(context.Background(), Address{Network: NetworkUnix, Path: file}, Security{}); err == nil {
		t.Fatal("listen over a regular file succeeded")
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("regular file was clobbered")
	}
}

func TestTCPMutualTLS(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateCerts(dir, []string{"127.0.0.1", "localhost"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{CAKeyFileName, HostKeyName, DPUKeyFileName} {
		fi, _ := os.Stat(filepath.Join(dir, n))
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", n, fi.Mode().Perm())
		}
	}
	if err := GenerateCerts(dir, []string{"127.0.0.1"}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("GenerateCerts over existing files: %v", err)
	}
	m := startMux(t, Address{Network: NetworkTCP, Host: "127.0.0.1"}, HostSecurity(dir))
	addr := m.Addr()
	ctx := context.Background()

	c, err := Dial(ctx, addr, DPUSecurity(dir), ChannelRuntime)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(interface{ ConnectionState() tls.ConnectionState }); !ok {
		t.Errorf("Dial returned %T, want a TLS connection", c)
	}
	if got := roundTrip(t, c, "secret"); got != "runtime:secret" {
		t.Fatalf("got %q", got)
	}

	// A client with certificates from another CA is refused.
	other := t.TempDir()
	if err := GenerateCerts(other, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if c, err := Dial(ctx, addr, DPUSecurity(other), ChannelRuntime); err == nil {
		refused(t, c)
	}
	// An unauthenticated plain client gets nothing.
	if c, err := Dial(ctx, addr, Security{Insecure: true}, ChannelRuntime); err == nil {
		refused(t, c)
	}
	// Dialling a host name the certificate does not carry fails.
	wrong := addr
	wrong.Host = "127.0.0.2"
	if c, err := Dial(ctx, wrong, DPUSecurity(dir), ChannelRuntime); err == nil {
		c.Close()
		t.Fatal("dial to a name outside the host certificate's SANs succeeded")
	}
}

func TestTCPNeedsTLSOrInsecure(t *testing.T) {
	addr := Address{Network: NetworkTCP, Host: "127.0.0.1", Port: 1}
	if _, err := Listen(context.Background(), addr, Security{}); err == nil || !strings.Contains(err.Error(), "mTLS") {
		t.Fatalf("Listen without TLS: %v", err)
	}
	if _, err := Dial(context.Background(), addr, Security{}, ChannelRuntime); err == nil || !strings.Contains(err.Error(), "mTLS") {
		t.Fatalf("Dial without TLS: %v", err)
	}
	m := startMux(t, Address{Network: NetworkTCP, Host: "127.0.0.1"}, Security{Insecure: true})
	c, err := Dial(context.Background(), m.Addr(), Security{Insecure: true}, ChannelStdio)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, "plain"); got != "stdio:plain" {
		t.Fatalf("got %q", got)
	}
}

func TestVsockNeedsAllowlist(t *testing.T) {
	_, err := Listen(context.Background(), Address{Network: NetworkVsock, CID: 3, Port: 1024}, Security{})
	if err == nil || !strings.Contains(err.Error(), "allowed peer CIDs") {
		t.Fatalf("vsock listen without allowlist: %v", err)
	}
}

func TestSilentPeerIsDropped(t *testing.T) {
	old := HandshakeTimeout
	HandshakeTimeout = 200 * time.Millisecond
	defer func() { HandshakeTimeout = old }()
	addr := Address{Network: NetworkUnix, Path: filepath.Join(t.TempDir(), "s.sock")}
	startMux(t, addr, Security{})
	raw, err := net.Dial("unix", addr.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent peer read: %v, want EOF after the handshake timeout", err)
	}
}

// Concurrent writers of mixed sizes (below, at and above a TLS record) and a
// concurrent reader on one mTLS connection see every byte, and half-close
// still delivers EOF.
func TestTLSBatchingKeepsStreamsIntact(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateCerts(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	m, err := Listen(context.Background(), Address{Network: NetworkTCP, Host: "127.0.0.1"}, HostSecurity(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l := m.Channel(ChannelRexec)
	go m.Serve()
	go echoServe(l, "e")

	c, err := Dial(context.Background(), m.Addr(), DPUSecurity(dir), ChannelRexec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Each writer sends blocks of one size, each block filled with the
	// writer's byte; blocks of different writers may interleave only at
	// block boundaries (one Write is atomic on a TLS conn).
	sizes := []int{1, 100, 16 << 10, 16<<10 + 1, 300 << 10, 1<<20 + 7}
	const perWriter = 8
	var want int
	for _, s := range sizes {
		want += s * perWriter
	}
	errs := make(chan error, len(sizes))
	for i, size := range sizes {
		go func(fill byte, size int) {
			block := bytes.Repeat([]byte{fill}, size)
			for j := 0; j < perWriter; j++ {
				if _, err := c.Write(block); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}(byte('a'+i), size)
	}
	got := make(map[byte]int)
	done := make(chan error, 1)
	go func() {
		r := io.LimitReader(c, int64(len("e:")+want))
		prefix := make([]byte, 2)
		if _, err := io.ReadFull(r, prefix); err != nil || string(prefix) != "e:" {
			done <- fmt.Errorf("prefix %q: %v", prefix, err)
			return
		}
		// Reassemble runs: a run of one byte value must add up to whole
		// blocks of that writer's size.
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			for _, b := range buf[:n] {
				got[b]++
			}
			if err == io.EOF {
				done <- nil
				return
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	for range sizes {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, size := range sizes {
		if got[byte('a'+i)] != size*perWriter {
			t.Errorf("writer %d (blocks of %d): received %d bytes, want %d", i, size, got[byte('a'+i)], size*perWriter)
		}
	}
	if err := CloseWrite(c); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %d more bytes, %v; want EOF", len(rest), err)
	}
}

// A TLS connection writes a gathered list of buffers in order (how qtfs
// sends a frame header and its 1 MiB payload) and exposes the TCP socket
// underneath for socket options.
func TestTLSWriteBuffers(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateCerts(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	m := startMux(t, Address{Network: NetworkTCP, Host: "127.0.0.1"}, HostSecurity(dir))
	go echoServe(m.Channel(ChannelQtfs), "q")
	c, err := Dial(context.Background(), m.Addr(), DPUSecurity(dir), ChannelQtfs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if nc, ok := c.(interface{ NetConn() net.Conn }); !ok {
		t.Errorf("%T has no NetConn", c)
	} else if _, ok := nc.NetConn().(*net.TCPConn); !ok {
		t.Errorf("NetConn() is %T, want *net.TCPConn", nc.NetConn())
	}
	bw, ok := c.(interface {
		WriteBuffers([][]byte) (int64, error)
	})
	if !ok {
		t.Fatalf("%T has no WriteBuffers", c)
	}
	// The echo comes back while we write: read it concurrently so neither
	// side waits on a full socket buffer.
	echoed := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		echoed <- b
	}()
	var want []byte
	send := func(bufs ...[]byte) {
		var n int
		for _, b := range bufs {
			want = append(want, b...)
			n += len(b)
		}
		if got, err := bw.WriteBuffers(bufs); err != nil || got != int64(n) {
			t.Fatalf("WriteBuffers: %d, %v; want %d", got, err, n)
		}
	}
	big := make([]byte, 1<<20+7)
	for i := range big {
		big[i] = byte(i * 7)
	}
	send([]byte("header+body"), big)
	send([]byte("x"), []byte("y"))
	send(big[:40<<10])
	send(big[:3], big[5:900<<10], big[1:2])
	if err := CloseWrite(c); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if got := <-echoed; !bytes.Equal(got, append([]byte("q:"), want...)) {
		t.Fatalf("echoed %d bytes, not the %d written (+2 prefix)", len(got), len(want))
	}
}
