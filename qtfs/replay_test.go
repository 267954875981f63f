package qtfs_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
	"github.com/dpu-offload/offload/qtfs/client"
	"golang.org/x/sys/unix"
)

// TestLinkDropExactlyOnce cuts the link right after the server executed a
// non-idempotent request and before its reply reached the client. The
// client sends the request again after the reconnect, the server answers it
// from the reply it recorded (FeatReplay), and the operation succeeds,
// having happened exactly once (without replay: EEXIST, ENOENT, a doubled
// append).
func TestLinkDropExactlyOnce(t *testing.T) {
	tb := newTestbed(t, tbOpts{cache: client.CacheNone, proxy: true})
	if tb.m.Session().Features()&qtfsv1.FeatReplay == 0 {
		t.Fatal("FeatReplay not negotiated")
	}
	must(t, os.WriteFile(tb.host("gone"), []byte("x"), 0o644))
	must(t, os.Mkdir(tb.host("gonedir"), 0o755))
	must(t, os.WriteFile(tb.host("log"), []byte("first\n"), 0o644))
	before := tb.m.Session().Info()

	var logf *os.File
	defer func() {
		if logf != nil {
			logf.Close()
		}
	}()
	steps := []struct {
		op qtfsv1.Op
		do func() error
	}{
		{qtfsv1.OpCreate, func() error {
			f, err := os.OpenFile(tb.dpu("new"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
			if err != nil {
				return err
			}
			if _, err := f.WriteString("created once"); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}},
		{qtfsv1.OpMkdir, func() error { return os.Mkdir(tb.dpu("dir"), 0o750) }},
		{qtfsv1.OpSymlink, func() error { return os.Symlink("new", tb.dpu("sym")) }},
		{qtfsv1.OpMknod, func() error { return unix.Mknod(tb.dpu("fifo"), unix.S_IFIFO|0o600, 0) }},
		{qtfsv1.OpLink, func() error { return os.Link(tb.dpu("new"), tb.dpu("hard")) }},
		{qtfsv1.OpRename, func() error { return os.Rename(tb.dpu("hard"), tb.dpu("moved")) }},
		{qtfsv1.OpUnlink, func() error { return os.Remove(tb.dpu("gone")) }},
		{qtfsv1.OpRmdir, func() error { return os.Remove(tb.dpu("gonedir")) }},
		{qtfsv1.OpSetXattr, func() error { return unix.Setxattr(tb.dpu("new"), "user.qtfs", []byte("v"), unix.XATTR_CREATE) }},
		{qtfsv1.OpRemoveXattr, func() error { return unix.Removexattr(tb.dpu("new"), "user.qtfs") }},
		{qtfsv1.OpOpen, func() error {
			var err error
			logf, err = os.OpenFile(tb.dpu("log"), os.O_WRONLY|os.O_APPEND, 0)
			return err
		}},
		{qtfsv1.OpWrite, func() error {
			_, err := logf.WriteString("appended once\n")
			return err
		}},
	}
	for i, s := range steps {
		tb.px.cutOnReply(s.op)
		if err := s.do(); err != nil {
			t.Fatalf("%s with its reply lost in a link drop: %v", s.op, err)
		}
		if got := tb.px.lostOps.Load(); got != int64(i+1) {
			t.Fatalf("%s: %d replies lost so far, want %d (the link was not cut)", s.op, got, i+1)
		}
	}

	if b, err := os.ReadFile(tb.host("new")); err != nil || string(b) != "created once" {
		t.Errorf("host new: %q %v", b, err)
	}
	if st, err := os.Stat(tb.host("dir")); err != nil || !st.IsDir() {
		t.Errorf("host dir: %v", err)
	}
	if l, err := os.Readlink(tb.host("sym")); err != nil || l != "new" {
		t.Errorf("host sym: %q %v", l, err)
	}
	if st, err := os.Lstat(tb.host("fifo")); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("host fifo: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(tb.host("new"), &st); err != nil || st.Nlink != 2 {
		t.Errorf("host new: nlink %d %v, want 2 (new and moved)", st.Nlink, err)
	}
	for _, n := range []string{"hard", "gone", "gonedir"} {
		if _, err := os.Lstat(tb.host(n)); !os.IsNotExist(err) {
			t.Errorf("host %s still there: %v", n, err)
		}
	}
	if _, err := unix.Getxattr(tb.host("new"), "user.qtfs", nil); err != unix.ENODATA {
		t.Errorf("host new user.qtfs: %v, want ENODATA", err)
	}
	if b, _ := os.ReadFile(tb.host("log")); !bytes.Equal(b, []byte("first\nappended once\n")) {
		t.Errorf("host log: %q", b)
	}
	after := tb.m.Session().Info()
	if after.Epoch != before.Epoch || after.Reconnects < len(steps) {
		t.Errorf("epoch %d -> %d, %d reconnects: want %d reconnects into the same session",
			before.Epoch, after.Epoch, after.Reconnects, len(steps))
	}
}

// TestLinkDropStorm cuts the link every few milliseconds while several
// writers create, rename and remove files: every call succeeds (none is
// executed twice and reports EEXIST or ENOENT), and the host ends up with
// exactly what the calls say.
func TestLinkDropStorm(t *testing.T) {
	tb := newTestbed(t, tbOpts{proxy: true})
	stop := make(chan struct{})
	cutterDone := make(chan struct{})
	go func() {
		defer close(cutterDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(15 * time.Millisecond):
				tb.px.cut()
			}
		}
	}()
	const writers, rounds = 4, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := tb.dpu(fmt.Sprintf("w%d", w))
			if err := os.Mkdir(dir, 0o755); err != nil {
				errs <- err
				return
			}
			for i := 0; i < rounds; i++ {
				a, b := filepath.Join(dir, fmt.Sprint("a", i)), filepath.Join(dir, fmt.Sprint("b", i))
				f, err := os.OpenFile(a, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
				if err == nil {
					_, err = f.WriteString(fmt.Sprint(i))
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
				if err == nil {
					err = os.Rename(a, b)
				}
				if err == nil && i%2 == 0 {
					err = os.Remove(b)
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d round %d: %w", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-cutterDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for w := 0; w < writers; w++ {
		ents, err := os.ReadDir(tb.host(fmt.Sprintf("w%d", w)))
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != rounds/2 {
			t.Errorf("host w%d has %d files, want %d", w, len(ents), rounds/2)
		}
		for _, e := range ents {
			var i int
			if _, err := fmt.Sscanf(e.Name(), "b%d", &i); err != nil || i%2 == 0 {
				t.Errorf("host w%d has %s", w, e.Name())
			} else if b, _ := os.ReadFile(tb.host(fmt.Sprintf("w%d/%s", w, e.Name()))); string(b) != fmt.Sprint(i) {
				t.Errorf("host w%d/%s holds %q", w, e.Name(), b)
			}
		}
	}
	t.Logf("%d reconnects", tb.m.Session().Info().Reconnects)
}
