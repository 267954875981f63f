package qtfs_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/dpu-offload/offload/api/transport"
	"github.com/dpu-offload/offload/qtfs/client"
	"github.com/dpu-offload/offload/qtfs/server"
)

// testbed is one host export served on a unix socket and mounted via FUSE.
type testbed struct {
	t      *testing.T
	export string // host directory
	mnt    string // mountpoint
	sock   string
	srv    *server.Server
	mux    *transport.Mux
	m      *client.Mount

	opts    tbOpts
	px      *proxy
	amu     sync.Mutex
	addr    transport.Address
	hostSec transport.Security
	dpuSec  transport.Security
}

type tbOpts struct {
	readOnly bool
	cache    client.CacheMode
	timeout  time.Duration
	exports  []server.Export // extra exports
	tls      bool            // TCP+mTLS on 127.0.0.1 instead of a unix socket
	ttl      time.Duration
	noNotify bool
	proxy    bool // the client reaches the server through a proxy that can cut the link
	heldDirs int  // server.Config.MaxHeldDirs
}

func newTestbedTTL(t *testing.T, ttl time.Duration) *testbed {
	return newTestbed(t, tbOpts{ttl: ttl})
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE and file handles")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

func newTestbed(t *testing.T, o tbOpts) *testbed {
	needRoot(t)
	dir := t.TempDir()
	tb := &testbed{t: t, export: filepath.Join(dir, "export"), mnt: filepath.Join(dir, "mnt"), sock: filepath.Join(dir, "qtfs.sock")}
	for _, d := range []string{tb.export, tb.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tb.addr = transport.Address{Network: transport.NetworkUnix, Path: tb.sock}
	if o.tls {
		certs := filepath.Join(dir, "certs")
		if err := transport.GenerateCerts(certs, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		tb.addr = transport.Address{Network: transport.NetworkTCP, Host: "127.0.0.1"}
		tb.hostSec, tb.dpuSec = transport.HostSecurity(certs), transport.DPUSecurity(certs)
	}
	tb.opts = o
	tb.startServer(o)
	if o.cache == "" {
		o.cache = client.CacheAuto
	}
	dial := tb.dial
	if o.proxy {
		tb.px = startProxy(t, filepath.Join(dir, "proxy.sock"), tb.sock)
		dial = func(ctx context.Context) (net.Conn, error) {
			return transport.Dial(ctx, transport.Address{Network: transport.NetworkUnix, Path: tb.px.path}, transport.Security{}, transport.ChannelQtfs)
		}
	}
	m, err := client.NewMount(context.Background(), client.MountOptions{
		SessionOptions: client.SessionOptions{Dial: dial, Export: "test", Timeout: o.timeout},
		Mountpoint:     tb.mnt, Cache: o.cache, ControlDir: filepath.Join(dir, "ctl"), AllowOther: true, TTL: o.ttl,
	})
	if err != nil {
		t.Fatal(err)
	}
	tb.m = m
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Logf("unmount: %v", err)
		}
		tb.stopServer()
	})
	return tb
}

func (tb *testbed) dial(ctx context.Context) (net.Conn, error) {
	tb.amu.Lock()
	addr := tb.addr
	tb.amu.Unlock()
	return transport.Dial(ctx, addr, tb.dpuSec, transport.ChannelQtfs)
}

func (tb *testbed) startServer(o tbOpts) {
	exports := append([]server.Export{{Name: "test", Path: tb.export, ReadOnly: o.readOnly}}, o.exports...)
	srv, err := server.New(server.Config{Exports: exports, DisableNotify: o.noNotify, MaxHeldDirs: o.heldDirs})
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.amu.Lock()
	defer tb.amu.Unlock()
	mux, err := transport.Listen(context.Background(), tb.addr, tb.hostSec)
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.addr = mux.Addr() // keeps the TCP port across restarts
	l := mux.Channel(transport.ChannelQtfs)
	go mux.Serve()
	go srv.Serve(l)
	tb.srv, tb.mux = srv, mux
}

func (tb *testbed) stopServer() {
	if tb.srv != nil {
		tb.mux.Close()
		tb.srv.Close()
		tb.srv = nil
	}
}

// host and dpu paths of a name.
func (tb *testbed) host(name string) string { return filepath.Join(tb.export, name) }
func (tb *testbed) dpu(name string) string  { return filepath.Join(tb.mnt, name) }

// proxy forwards unix connections byte for byte and can cut them all, as a
// link drop would, while the server keeps running. It can also cut them at
// the moment a chosen reply comes back from the server, which is then lost:
// the server executed the request, the client never hears of it.
type proxy struct {
	path, target string
	l            net.Listener
	mu           sync.Mutex
	conns        []net.Conn

	cutOn   atomic.Uint32 // opcode whose next reply is lost with the link (0: none)
	lostOps atomic.Int64  // replies lost that way
}

// cutOnReply arms the proxy: the next reply to op from the server is not
// forwarded and every connection is cut instead.
func (p *proxy) cutOnReply(op qtfsv1.Op) { p.cutOn.Store(uint32(op)) }

// toClient copies frames from the server to the client (everything the
// server sends is frames), cutting the link when an armed reply passes.
func (p *proxy) toClient(c, u net.Conn) {
	defer c.Close()
	hdr := make([]byte, qtfsv1.HeaderSize)
	var buf []byte
	for {
		h, payload, err := qtfsv1.ReadFrame(u, hdr, buf)
		if err != nil {
			return
		}
		buf = payload[:0]
		if op := p.cutOn.Load(); op != 0 && h.Flags&qtfsv1.FlagReply != 0 && uint32(h.Op) == op &&
			p.cutOn.CompareAndSwap(op, 0) {
			p.lostOps.Add(1)
			p.cut()
			return
		}
		if err := qtfsv1.WriteFrame(c, h, payload, nil); err != nil {
			return
		}
	}
}

func startProxy(t *testing.T, path, target string) *proxy {
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{path: path, target: target, l: l}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go p.toClient(c, u)
		}
	}()
	return p
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
