//go:build e2e

package qtfs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

const (
	seqSize    = 256 << 20
	ioChunk    = 1 << 20
	randReads  = 8192
	nFiles     = 10000
	treeDirs   = 100 // tree: 100 dirs × 100 files
	layerFiles = 6000
)

// measure is one timed workload: its duration and what it moved.
type measure struct {
	d     time.Duration
	bytes int64
	ops   int
	err   error
}

// workload names, in table order.
const (
	wSeqWrite = "seq write 256 MiB"
	wSeqRead  = "seq read 256 MiB (uncached)"
	wRandRead = "rand read 4 KiB (uncached)"
	wStatCold = "stat 10k files, cold"
	wStatWarm = "stat 10k files, warm"
	wStatHit  = "re-stat 10k, 100 at a time"
	wReaddir  = "readdir 10k entries (cold)"
	wWalk     = "walk 10k-file tree (cold)"
	wCreate   = "create 10k files"
	wUntar    = "untar ~100 MB layer"
)

var workloads = []string{wSeqWrite, wSeqRead, wRandRead, wStatCold, wStatWarm, wStatHit, wReaddir, wWalk, wCreate, wUntar}

// dropCaches empties the page, dentry and inode caches (client side of
// every FUSE mount; tmpfs data itself stays in memory).
func dropCaches() {
	unix.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
}

// prepareExport builds, natively on the host side, the trees the
// metadata workloads read: tree/dNN/fNN (10k files) and flat/ (10k files).
func prepareExport(export string) error {
	for d := 0; d < treeDirs; d++ {
		dir := filepath.Join(export, "tree", fmt.Sprintf("d%02d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for f := 0; f < nFiles/treeDirs; f++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", f)), []byte("x"), 0o644); err != nil {
				return err
			}
		}
	}
	flat := filepath.Join(export, "flat")
	if err := os.MkdirAll(flat, 0o755); err != nil {
		return err
	}
	for f := 0; f < nFiles; f++ {
		fd, err := unix.Open(filepath.Join(flat, fmt.Sprintf("entry-%05d", f)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		unix.Close(fd)
	}
	return nil
}

func timeIt(fn func() (int64, int, error)) measure {
	t0 := time.Now()
	b, n, err := fn()
	return measure{d: time.Since(t0), bytes: b, ops: n, err: err}
}

func seqWrite(path string) (int64, int, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, 0, err
	}
	buf := bytes.Repeat([]byte("0123456789abcdef"), ioChunk/16)
	var n int64
	for n < seqSize {
		w, err := f.Write(buf)
		n += int64(w)
		if err != nil {
			f.Close()
			return n, 0, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return n, 0, err
	}
	return n, 0, f.Close()
}

func seqRead(path string) (int64, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, ioChunk)
	var n int64
	for {
		r, err := f.Read(buf)
		n += int64(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, 0, err
		}
	}
	if n != seqSize {
		return n, 0, fmt.Errorf("read %d bytes, want %d", n, seqSize)
	}
	return n, 0, nil
}

func randRead(path string) (int64, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	var n int64
	for i := 0; i < randReads; i++ {
		off := int64(rng.IntN(seqSize/4096)) * 4096
		r, err := f.ReadAt(buf, off)
		if err != nil {
			return n, i, err
		}
		n += int64(r)
	}
	return n, randReads, nil
}

func treePaths(root string) []string {
	var ps []string
	for d := 0; d < treeDirs; d++ {
		for f := 0; f < nFiles/treeDirs; f++ {
			ps = append(ps, filepath.Join(root, "tree", fmt.Sprintf("d%02d", d), fmt.Sprintf("f%02d", f)))
		}
	}
	return ps
}

func statAll(paths []string) (int64, int, error) {
	var st unix.Stat_t
	for i, p := range paths {
		if err := unix.Lstat(p, &st); err != nil {
			return 0, i, fmt.Errorf("lstat %s: %w", p, err)
		}
	}
	return 0, len(paths), nil
}

// restat times the cost of a cache hit: each group of 100 paths is
// stat'ed once untimed and then again timed, well within any cache timeout.
func restat(paths []string) measure {
	var total time.Duration
	for i := 0; i < len(paths); i += 100 {
		chunk := paths[i:min(i+100, len(paths))]
		if _, _, err := statAll(chunk); err != nil {
			return measure{err: err}
		}
		t0 := time.Now()
		if _, _, err := statAll(chunk); err != nil {
			return measure{err: err}
		}
		total += time.Since(t0)
	}
	return measure{d: total, ops: len(paths)}
}

func readdirAll(dir string) (int64, int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, len(names), err
	}
	if len(names) != nFiles {
		return 0, len(names), fmt.Errorf("readdir got %d names, want %d", len(names), nFiles)
	}
	return 0, len(names), nil
}

func walk(root string) (int64, int, error) {
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if _, err := d.Info(); err != nil { // lstat, as find/du do
			return err
		}
		if !d.IsDir() {
			n++
		}
		return nil
	})
	if err == nil && n != nFiles {
		err = fmt.Errorf("walk saw %d files, want %d", n, nFiles)
	}
	return 0, n, err
}

func createAll(dir string) (int64, int, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, 0, err
	}
	for i := 0; i < nFiles; i++ {
		fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("new-%05d", i)), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return 0, i, err
		}
		unix.Close(fd)
	}
	return 0, nFiles, nil
}

func untar(layer, dir string) (int64, int, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, 0, err
	}
	st, err := os.Stat(layer)
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tar", "-xf", layer, "-C", dir).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("tar: %w: %s", err, out)
	}
	return st.Size(), layerFiles, nil
}

// makeLayer writes a deterministic image-layer-like tar: 6000 files of
// 512 B..~33 KiB (≈100 MB) in 60 directories, plus symlinks.
func makeLayer(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	rng := rand.New(rand.NewPCG(42, 7))
	mtime := time.Unix(1700000000, 0)
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for d := 0; d < 60; d++ {
		dir := fmt.Sprintf("usr/lib/pkg%02d/", d)
		if d == 0 {
			for _, p := range []string{"usr/", "usr/lib/"} {
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p, Mode: 0o755, ModTime: mtime})
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: mtime}); err != nil {
			return err
		}
		for i := 0; i < layerFiles/60; i++ {
			size := 512 + rng.IntN(32<<10)
			off := rng.IntN(len(data) - size)
			h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sfile%03d.so", dir, i), Mode: 0o644, Size: int64(size), ModTime: mtime}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if _, err := tw.Write(data[off : off+size]); err != nil {
				return err
			}
		}
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: dir + "current", Linkname: "file000.so", ModTime: mtime})
	}
	return tw.Close()
}
