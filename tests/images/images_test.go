package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// readArchive returns the regular files of an OCI archive by name.
func readArchive(t *testing.T, p string) map[string][]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read archive: %v", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := files[h.Name]; dup {
			t.Errorf("archive has %s twice", h.Name)
		}
		files[h.Name] = b
	}
	return files
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// layerEntries decompresses a gzip layer and returns its tar headers by name
// and the digest of the uncompressed tar.
func layerEntries(t *testing.T, blob []byte) (map[string]*tar.Header, map[string][]byte, string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	hdrs := map[string]*tar.Header{}
	data := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("layer tar: %v", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		hdrs[name] = h
		if h.Typeflag == tar.TypeReg && h.Size < 1<<20 {
			b, _ := io.ReadAll(tr)
			data[name] = b
		}
	}
	return hdrs, data, sha(raw)
}

// checkLayout verifies an OCI archive: layout file, index naming ref, and
// every blob's digest and size as referenced. It returns the config and the
// layers' headers and small file contents.
func checkLayout(t *testing.T, p, ref string) (ocispec.Image, []map[string]*tar.Header, []map[string][]byte) {
	t.Helper()
	files := readArchive(t, p)
	for name, b := range files {
		if strings.HasPrefix(name, "blobs/sha256/") {
			if got, want := sha(b), "sha256:"+strings.TrimPrefix(name, "blobs/sha256/"); got != want {
				t.Errorf("blob %s has digest %s", name, got)
			}
		}
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(files[ocispec.ImageLayoutFile], &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout = %q (%v)", files[ocispec.ImageLayoutFile], err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(files[ocispec.ImageIndexFile], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	md := index.Manifests[0]
	if md.Annotations[annotationImageName] != ref || md.Annotations[ocispec.AnnotationRefName] != "latest" {
		t.Errorf("manifest annotations = %v, want image name %s", md.Annotations, ref)
	}
	if md.Platform == nil || md.Platform.OS != "linux" {
		t.Errorf("manifest platform = %v", md.Platform)
	}
	blob := func(d ocispec.Descriptor) []byte {
		t.Helper()
		b, ok := files[blobPath(string(d.Digest))]
		if !ok {
			t.Fatalf("blob %s missing", d.Digest)
		}
		if int64(len(b)) != d.Size {
			t.Fatalf("blob %s has %d bytes, descriptor says %d", d.Digest, len(b), d.Size)
		}
		return b
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(blob(md), &m); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest || m.Config.MediaType != ocispec.MediaTypeImageConfig {
		t.Errorf("manifest header = %d %s %s", m.SchemaVersion, m.MediaType, m.Config.MediaType)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(blob(m.Config), &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		t.Fatalf("%d diff_ids for %d layers", len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	var hdrs []map[string]*tar.Header
	var datas []map[string][]byte
	for i, l := range m.Layers {
		if l.MediaType != ocispec.MediaTypeImageLayerGzip {
			t.Errorf("layer %d media type %s", i, l.MediaType)
		}
		h, d, diffID := layerEntries(t, blob(l))
		if diffID != string(cfg.RootFS.DiffIDs[i]) {
			t.Errorf("layer %d diff_id %s, config says %s", i, diffID, cfg.RootFS.DiffIDs[i])
		}
		hdrs = append(hdrs, h)
		datas = append(datas, d)
	}
	return cfg, hdrs, datas
}

func TestBusyboxImage(t *testing.T) {
	img, err := Busybox(DefaultBusybox)
	if err != nil {
		t.Skipf("busybox-static not installed: %v", err)
	}
	dir := t.TempDir()
	p, err := Build(dir, img)
	if err != nil {
		t.Fatal(err)
	}
	cfg, layers, data := checkLayout(t, p, BusyboxRef)
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if got := strings.Join(cfg.Config.Cmd, " "); got != "/bin/sh" {
		t.Errorf("Cmd = %q", got)
	}
	if len(cfg.Config.Env) == 0 || !strings.HasPrefix(cfg.Config.Env[0], "PATH=") || !strings.Contains(cfg.Config.Env[0], "/bin") {
		t.Errorf("Env = %q, want PATH", cfg.Config.Env)
	}
	h := layers[0]
	if bb := h["bin/busybox"]; bb == nil || bb.Typeflag != tar.TypeReg || bb.Mode&0o111 == 0 {
		t.Errorf("bin/busybox = %+v", bb)
	}
	for _, link := range []string{"bin/sh", "bin/ls", "bin/cat"} {
		if l := h[link]; l == nil || l.Typeflag != tar.TypeSymlink || l.Linkname != "/bin/busybox" {
			t.Errorf("%s = %+v, want symlink to /bin/busybox", link, l)
		}
	}
	for _, d := range []string{"tmp", "proc", "sys", "dev", "etc", "root"} {
		if e := h[d]; e == nil || e.Typeflag != tar.TypeDir {
			t.Errorf("%s = %+v, want a directory", d, e)
		}
	}
	if h["tmp"].Mode != 0o1777 {
		t.Errorf("/tmp mode %o", h["tmp"].Mode)
	}
	if home := h["home/user"]; home == nil || home.Uid != UserUID {
		t.Errorf("home/user = %+v", home)
	}
	if !strings.Contains(string(data[0]["etc/passwd"]), "root:x:0:0:") || !strings.Contains(string(data[0]["etc/passwd"]), ":x:1000:1000:") {
		t.Errorf("/etc/passwd = %q", data[0]["etc/passwd"])
	}
	if !strings.Contains(string(data[0]["etc/group"]), "root:x:0:") || !strings.Contains(string(data[0]["etc/group"]), ":x:1000:") {
		t.Errorf("/etc/group = %q", data[0]["etc/group"])
	}

	// A second build finds the cached archive and leaves it alone.
	st, _ := os.Stat(p)
	p2, err := Build(dir, img)
	if err != nil || p2 != p {
		t.Fatalf("second build = %s, %v; want %s", p2, err, p)
	}
	st2, _ := os.Stat(p2)
	if !st2.ModTime().Equal(st.ModTime()) {
		t.Error("second build rewrote the cached archive")
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".build-*")); len(tmps) != 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

var smallBig = BigParams{
	SmallFiles: 120, SmallMin: 10, SmallMax: 300,
	MediumFiles: 30, MediumMin: 1000, MediumMax: 3000,
	LargeFiles: 2, LargeSize: 64 << 10, FilesPerDir: 50,
}

func TestBigImageLayersAndDeterminism(t *testing.T) {
	img, err := Big(DefaultBusybox, smallBig)
	if err != nil {
		t.Skipf("busybox-static not installed: %v", err)
	}
	var a, b bytes.Buffer
	da, err := WriteArchive(&a, t.TempDir(), img)
	if err != nil {
		t.Fatal(err)
	}
	db, err := WriteArchive(&b, t.TempDir(), img)
	if err != nil {
		t.Fatal(err)
	}
	if da.Digest != db.Digest || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatalf("two builds differ: %s vs %s", da.Digest, db.Digest)
	}
	p := filepath.Join(t.TempDir(), "big.tar")
	if err := os.WriteFile(p, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, layers, _ := checkLayout(t, p, BigRef)
	if len(layers) != 4 {
		t.Fatalf("%d layers, want 4", len(layers))
	}
	count := func(h map[string]*tar.Header, prefix string) (n int, size int64) {
		for name, e := range h {
			if strings.HasPrefix(name, prefix) && e.Typeflag == tar.TypeReg {
				n++
				size += e.Size
			}
		}
		return
	}
	for i, want := range []struct {
		prefix string
		n      int
		min    int64
	}{
		{"data/small/", smallBig.SmallFiles, int64(smallBig.SmallFiles * smallBig.SmallMin)},
		{"data/medium/", smallBig.MediumFiles, int64(smallBig.MediumFiles * smallBig.MediumMin)},
		{"data/large/", smallBig.LargeFiles, int64(smallBig.LargeFiles * smallBig.LargeSize)},
	} {
		n, size := count(layers[i+1], want.prefix)
		if n != want.n || size < want.min {
			t.Errorf("layer %d: %d files of %d bytes under %s, want %d files of >= %d bytes", i+1, n, size, want.prefix, want.n, want.min)
		}
	}
	if layers[0]["bin/busybox"] == nil {
		t.Error("big image lacks the busybox base layer")
	}

	// Different parameters give a different cache name.
	other := smallBig
	other.SmallFiles++
	img2, _ := Big(DefaultBusybox, other)
	if img2.cacheName() == img.cacheName() {
		t.Error("cache name ignores the parameters")
	}
}

func TestDefaultBigIsBigEnough(t *testing.T) {
	if got := DefaultBig.MinBytes(); got < 100<<20 {
		t.Errorf("DefaultBig has at least %d bytes, want >= 100 MiB", got)
	}
	if n := DefaultBig.SmallFiles + DefaultBig.MediumFiles; n < 2000 {
		t.Errorf("DefaultBig has %d small files, want thousands", n)
	}
}
