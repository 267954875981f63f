package qtfs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/qtfs/client"
)

// TestReconnectDuringRead restarts the server while a file is open and being
// read: the read continues with the right bytes, and other handles work.
func TestReconnectDuringRead(t *testing.T) {
	tb := newTestbed(t, tbOpts{cache: client.CacheNone})
	data := make([]byte, 8<<20)
	rand.Read(data)
	must(t, os.MkdirAll(tb.host("a/b"), 0o755))
	must(t, os.WriteFile(tb.host("a/b/file"), data, 0o644))

	f, err := os.Open(tb.dpu("a/b/file"))
	must(t, err)
	defer f.Close()
	got := make([]byte, 0, len(data))
	buf := make([]byte, 1<<20)
	n, err := io.ReadFull(f, buf)
	must(t, err)
	got = append(got, buf[:n]...)

	tb.stopServer()
	restarted := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		tb.startServer(tb.opts)
		close(restarted)
	}()
	// This read starts while the server is down and completes after the restart.
	for {
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		must(t, err)
	}
	<-restarted
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes across the restart, content differs", len(got))
	}
	// Nodes looked up before the restart are resolved again by path.
	if _, err := os.Stat(tb.dpu("a/b/file")); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(tb.dpu("a/b/after"), []byte("ok"), 0o644))
	if b, _ := os.ReadFile(tb.host("a/b/after")); string(b) != "ok" {
		t.Fatalf("write after reconnect: %q", b)
	}
	mi := tb.m.Session().Info()
	if mi.Reconnects < 1 || !mi.Connected {
		t.Fatalf("info after restart: %+v", mi)
	}

	// A file deleted while the server was away is really gone: ESTALE.
	g, err := os.Open(tb.dpu("a/b/after"))
	must(t, err)
	defer g.Close()
	tb.stopServer()
	must(t, os.Remove(tb.host("a/b/after")))
	tb.startServer(tb.opts)
	if _, err := g.Read(buf); !errors.Is(err, syscall.ESTALE) {
		t.Fatalf("read of a file removed during the outage: %v, want ESTALE", err)
	}
}

// TestHostUnreachableEIO: with the server gone past the timeout, calls fail
// with EIO instead of hanging; the mount recovers when the server returns.
func TestHostUnreachableEIO(t *testing.T) {
	tb := newTestbed(t, tbOpts{cache: client.CacheNone, timeout: time.Second})
	must(t, os.WriteFile(tb.host("f"), []byte("x"), 0o644))
	tb.stopServer()
	start := time.Now()
	_, err := os.Stat(tb.dpu("f"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("stat with the host away: %v, want EIO", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	tb.startServer(tb.opts)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(tb.dpu("f")); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMTLS mounts over TCP with mutual TLS on loopback and checks that a
// client without a certificate is refused.
func TestMTLS(t *testing.T) {
	tb := newTestbed(t, tbOpts{tls: true})
	must(t, os.WriteFile(tb.dpu("f"), []byte("over tls"), 0o644))
	if b, _ := os.ReadFile(tb.host("f")); string(b) != "over tls" {
		t.Fatalf("host has %q", b)
	}
	// Bulk data both ways (1 MiB frames leave as batched TLS records).
	data := make([]byte, 9<<20+12345)
	rand.Read(data)
	must(t, os.WriteFile(tb.dpu("big"), data, 0o644))
	if b, _ := os.ReadFile(tb.host("big")); !bytes.Equal(b, data) {
		t.Fatalf("host has %d bytes, not what was written through the mount", len(b))
	}
	rand.Read(data[:3<<20])
	must(t, os.WriteFile(tb.host("big"), data, 0o644))
	if b, _ := os.ReadFile(tb.dpu("big")); !bytes.Equal(b, data) {
		t.Fatalf("mount reads %d bytes, not what the host holds", len(b))
	}
	mi, err := client.QueryInfo(filepath.Join(filepath.Dir(tb.mnt), "ctl"), tb.mnt)
	if err != nil || !mi.Connected || mi.Conns != 3 {
		t.Fatalf("info: %+v %v", mi, err)
	}
	// Without a client certificate the handshake never happens.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = client.Connect(ctx, client.SessionOptions{Export: "test", Dial: func(ctx context.Context) (net.Conn, error) {
		return transport.Dial(ctx, tb.addr, transport.Security{Insecure: true}, transport.ChannelQtfs)
	}})
	if err == nil {
		t.Fatal("plain TCP client was served by an mTLS server")
	}
}

// TestLinkDropKeepsSession: the link drops but the server lives on; the
// client reconnects into the same session (same generation), so open files
// and node handles stay valid without re-resolving anything.
func TestLinkDropKeepsSession(t *testing.T) {
	tb := newTestbed(t, tbOpts{cache: client.CacheNone, proxy: true})
	data := make([]byte, 4<<20)
	rand.Read(data)
	must(t, os.WriteFile(tb.host("f"), data, 0o644))
	f, err := os.Open(tb.dpu("f"))
	must(t, err)
	defer f.Close()
	buf := make([]byte, 1<<20)
	got := make([]byte, 0, len(data))
	n, err := io.ReadFull(f, buf)
	must(t, err)
	got = append(got, buf[:n]...)
	before := tb.m.Session().Info()

	tb.px.cut()
	for {
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		must(t, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("content differs across the link drop")
	}
	after := tb.m.Session().Info()
	if after.Reconnects < 1 || after.Epoch != before.Epoch {
		t.Fatalf("reconnects %d, epoch %d -> %d (want a reconnect into the same session)", after.Reconnects, before.Epoch, after.Epoch)
	}
	must(t, os.WriteFile(tb.dpu("g"), []byte("after"), 0o644))
}
