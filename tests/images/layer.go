package images

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"time"
)

// epoch is the modification time of every entry: fixed so that the same
// inputs always give the same layer digests.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Layer is one filesystem layer of an image. Write adds the layer's entries
// in a fixed order; Comment goes into the image history.
type Layer struct {
	Comment string
	Write   func(w *LayerWriter) error
}

// LayerWriter writes tar entries with fixed metadata (mtime, owner names) so
// that layers are reproducible.
type LayerWriter struct {
	tw    *tar.Writer
	files int
	bytes int64
}

func (w *LayerWriter) header(h *tar.Header) error {
	h.ModTime = epoch
	h.Format = tar.FormatPAX
	if err := w.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("tar header %q: %w", h.Name, err)
	}
	return nil
}

// Dir adds a directory owned by uid:gid.
func (w *LayerWriter) Dir(name string, mode int64, uid, gid int) error {
	return w.header(&tar.Header{Typeflag: tar.TypeDir, Name: path.Clean(name) + "/", Mode: mode, Uid: uid, Gid: gid})
}

// File adds a regular file with the given content, owned by root.
func (w *LayerWriter) File(name string, mode int64, content []byte) error {
	if err := w.header(&tar.Header{Typeflag: tar.TypeReg, Name: path.Clean(name), Mode: mode, Size: int64(len(content))}); err != nil {
		return err
	}
	if _, err := w.tw.Write(content); err != nil {
		return fmt.Errorf("tar write %q: %w", name, err)
	}
	w.files++
	w.bytes += int64(len(content))
	return nil
}

// FileFrom adds a regular file of size bytes copied from r, owned by root.
func (w *LayerWriter) FileFrom(name string, mode int64, size int64, r io.Reader) error {
	if err := w.header(&tar.Header{Typeflag: tar.TypeReg, Name: path.Clean(name), Mode: mode, Size: size}); err != nil {
		return err
	}
	n, err := io.CopyN(w.tw, r, size)
	if err != nil {
		return fmt.Errorf("tar write %q (%d of %d bytes): %w", name, n, size, err)
	}
	w.files++
	w.bytes += size
	return nil
}

// Symlink adds a symbolic link name -> target.
func (w *LayerWriter) Symlink(name, target string) error {
	return w.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: path.Clean(name), Linkname: target, Mode: 0o777})
}

// builtLayer is a layer written to a temporary file as a gzip blob.
type builtLayer struct {
	file   string // compressed blob
	digest string // sha256:... of the compressed blob
	diffID string // sha256:... of the uncompressed tar
	size   int64  // compressed size
	files  int
	bytes  int64 // uncompressed bytes of file content
}

// countingWriter counts bytes on their way to w.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// buildLayer writes l as a gzip-compressed tar into a new file in dir and
// returns its digests. gzip's header carries no name or time, so the blob is
// reproducible too.
func buildLayer(dir string, l Layer) (*builtLayer, error) {
	f, err := os.CreateTemp(dir, "layer-*.tar.gz")
	if err != nil {
		return nil, fmt.Errorf("create layer file: %w", err)
	}
	defer f.Close()

	blobHash := sha256.New()
	blob := &countingWriter{w: io.MultiWriter(f, blobHash)}
	zw, err := gzip.NewWriterLevel(blob, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	diffHash := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, diffHash))
	lw := &LayerWriter{tw: tw}
	if err := l.Write(lw); err != nil {
		return nil, fmt.Errorf("layer %q: %w", l.Comment, err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer %q: close tar: %w", l.Comment, err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("layer %q: close gzip: %w", l.Comment, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("layer %q: %w", l.Comment, err)
	}
	return &builtLayer{
		file:   f.Name(),
		digest: "sha256:" + hex.EncodeToString(blobHash.Sum(nil)),
		diffID: "sha256:" + hex.EncodeToString(diffHash.Sum(nil)),
		size:   blob.n,
		files:  lw.files,
		bytes:  lw.bytes,
	}, nil
}

// digestOf returns the sha256 digest string of b.
func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// textBytes returns n bytes of deterministic word-like text (compressible,
// like configuration and source files) drawn from r.
func textBytes(r io.Reader, n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz      \n"
	raw := make([]byte, n)
	if _, err := io.ReadFull(r, raw); err != nil {
		panic(err) // r is an infinite PRNG stream
	}
	for i, c := range raw {
		raw[i] = alphabet[int(c)%len(alphabet)]
	}
	return raw
}
