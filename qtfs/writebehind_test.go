package qtfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWriteBehind: writes answered before the host has them are invisible
// as such: overlapping writes land in order, reads, stat and the host after
// close see every byte, and a write the host refuses fails close() and
// fsync().
func TestWriteBehind(t *testing.T) {
	tb := newTestbed(t, tbOpts{})
	p := tb.dpu("f")
	f, err := os.Create(p)
	must(t, err)
	want := make([]byte, 0, 64<<10)
	for i := 0; i < 64; i++ {
		chunk := bytes.Repeat([]byte{byte('a' + i%26)}, 1024)
		if _, err := f.WriteAt(chunk, int64(i*1024)); err != nil {
			t.Fatal(err)
		}
		// overwrite the previous chunk's second half, overlapping it
		if i > 0 {
			if _, err := f.WriteAt(chunk[:512], int64(i*1024-512)); err != nil {
				t.Fatal(err)
			}
			copy(want[len(want)-512:], chunk[:512])
		}
		want = append(want, chunk...)
	}
	if st, err := f.Stat(); err != nil || st.Size() != int64(len(want)) {
		t.Fatalf("fstat before close: %v %v", st, err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != int64(len(want)) {
		t.Fatalf("stat before close: %v %v", fi, err)
	}
	got := make([]byte, len(want))
	g, err := os.Open(p)
	must(t, err)
	if _, err := g.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read before close: %v, equal %v", err, bytes.Equal(got, want))
	}
	g.Close()
	must(t, f.Close())
	if b, _ := os.ReadFile(tb.host("f")); !bytes.Equal(b, want) {
		t.Fatalf("host after close: %d bytes, equal %v", len(b), bytes.Equal(b, want))
	}

	// A full file system on the host: close reports it.
	must(t, os.Mkdir(tb.host("small"), 0o755))
	must(t, unix.Mount("tmpfs", tb.host("small"), "tmpfs", 0, "size=64k"))
	t.Cleanup(func() { unix.Unmount(tb.host("small"), unix.MNT_DETACH) })
	f, err = os.Create(tb.dpu("small/big"))
	must(t, err)
	var werr error
	for i := 0; i < 64 && werr == nil; i++ {
		_, werr = f.Write(make([]byte, 4096))
	}
	cerr := f.Close()
	if werr == nil && cerr == nil {
		t.Fatal("256 KiB into a 64 KiB tmpfs: no error from write or close")
	}
	if err := errors.Join(werr, cerr); !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EIO) {
		t.Fatalf("full host file system: write %v, close %v", werr, cerr)
	}
	f, err = os.OpenFile(tb.dpu("small/big2"), os.O_CREATE|os.O_WRONLY, 0o644)
	must(t, err)
	werr = nil
	for i := 0; i < 64 && werr == nil; i++ {
		_, werr = f.Write(make([]byte, 4096))
	}
	if err := f.Sync(); werr == nil && err == nil {
		t.Fatal("fsync after writes into a full file system: no error from write or fsync")
	}
	f.Close()
}

// TestWriteBehindNoStarvation: a steady writer keeps writes in flight all the
// time; lookups and stats (which wait for writes started before them) still
// get through while it runs.
func TestWriteBehindNoStarvation(t *testing.T) {
	tb := newTestbed(t, tbOpts{})
	f, err := os.Create(tb.dpu("stream"))
	must(t, err)
	defer f.Close()
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		buf := make([]byte, 64<<10)
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			if _, err := f.WriteAt(buf, int64(n%64)*int64(len(buf))); err != nil {
				t.Error(err)
				done <- n
				return
			}
			n++
		}
	}()
	deadline := time.AfterFunc(30*time.Second, func() { close(stop) })
	defer deadline.Stop()
	for i := 0; i < 20; i++ {
		os.Stat(tb.dpu(fmt.Sprintf("missing-%d", i)))
		if _, err := os.Stat(tb.dpu("stream")); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case n := <-done:
		t.Fatalf("stats waited until the writer was stopped (%d writes)", n)
	default:
	}
	if deadline.Stop() {
		close(stop)
	}
	<-done
}
