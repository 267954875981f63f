// Package images builds the testbed's container images offline: OCI image
// archives importable with `ctr image import`, made from Debian's
// busybox-static without network access or a Docker engine.
//
// Two images exist: BusyboxRef, a minimal shell image, and BigRef, a
// multi-layer image of more than 100 MB with thousands of small files for
// unpack tests and benchmarks. Both are reproducible: the same inputs give
// the same digests, and Build caches archives under a key derived from the
// inputs so that a second build is instant.
package images

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image references, as `ctr image import` names them.
const (
	BusyboxRef = "localhost/offload/busybox:latest"
	BigRef     = "localhost/offload/big:latest"
)

// formatVersion is part of every cache key: bump it when a change to this
// package changes the archives it writes.
const formatVersion = "1"

// annotationImageName is containerd's annotation naming the image an index
// entry becomes on import (images.AnnotationImageName).
const annotationImageName = "io.containerd.image.name"

// Image describes an image to build.
type Image struct {
	// Ref is the full reference `ctr image import` gives the image.
	Ref string
	// Key identifies the inputs (generator parameters, input file digests);
	// together with Ref and formatVersion it names the cached archive.
	Key    string
	Layers []Layer
	Config ocispec.ImageConfig
}

// cacheName is the file name of the image's archive in a cache directory.
func (img Image) cacheName() string {
	sum := sha256.Sum256([]byte(formatVersion + "\x00" + img.Ref + "\x00" + img.Key + "\x00" + runtime.GOARCH))
	name := img.Ref
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	name = strings.ReplaceAll(name, ":", "-")
	return name + "-" + hex.EncodeToString(sum[:])[:16] + ".tar"
}

// Build returns the path of img's OCI archive in dir, writing it first
// unless an archive for the same inputs is already there.
func Build(dir string, img Image) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("image cache: %w", err)
	}
	out := filepath.Join(dir, img.cacheName())
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	tmp, err := os.CreateTemp(dir, ".build-*.tar")
	if err != nil {
		return "", fmt.Errorf("image %s: %w", img.Ref, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := WriteArchive(tmp, dir, img); err != nil {
		return "", err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return "", fmt.Errorf("image %s: %w", img.Ref, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("image %s: %w", img.Ref, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("image %s: %w", img.Ref, err)
	}
	return out, nil
}

// WriteArchive writes img as an OCI image layout tar to w and returns the
// manifest's descriptor. Layers are staged as temporary files in tmpDir.
func WriteArchive(w io.Writer, tmpDir string, img Image) (ocispec.Descriptor, error) {
	var layers []*builtLayer
	defer func() {
		for _, l := range layers {
			os.Remove(l.file)
		}
	}()
	for _, l := range img.Layers {
		bl, err := buildLayer(tmpDir, l)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
		}
		layers = append(layers, bl)
	}

	cfg := ocispec.Image{
		Created:  &epoch,
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config:   img.Config,
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
	}
	for i, l := range layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest.Digest(l.diffID))
		cfg.History = append(cfg.History, ocispec.History{Created: &epoch, CreatedBy: "offload tests/images", Comment: img.Layers[i].Comment})
		manifest.Layers = append(manifest.Layers, ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageLayerGzip,
			Digest:    digest.Digest(l.digest),
			Size:      l.size,
		})
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	manifest.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.Digest(digestOf(cfgJSON)), Size: int64(len(cfgJSON))}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	tag := img.Ref[strings.LastIndex(img.Ref, ":")+1:]
	mdesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    digest.Digest(digestOf(manifestJSON)),
		Size:      int64(len(manifestJSON)),
		Platform:  &cfg.Platform,
		Annotations: map[string]string{
			annotationImageName:       img.Ref,
			ocispec.AnnotationRefName: tag,
		},
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{mdesc},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	layoutJSON, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return ocispec.Descriptor{}, err
	}

	tw := tar.NewWriter(w)
	put := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch})
	}
	if err := dir("blobs/"); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	if err := dir("blobs/sha256/"); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	written := map[string]bool{}
	for _, l := range layers {
		if written[l.digest] {
			continue
		}
		written[l.digest] = true
		if err := putFile(tw, blobPath(l.digest), l.file, l.size); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
		}
	}
	for _, b := range [][]byte{cfgJSON, manifestJSON} {
		if err := put(blobPath(digestOf(b)), b); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
		}
	}
	if err := put(ocispec.ImageLayoutFile, layoutJSON); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	if err := put(ocispec.ImageIndexFile, indexJSON); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	if err := tw.Close(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	return mdesc, nil
}

func blobPath(dgst string) string {
	return "blobs/sha256/" + strings.TrimPrefix(dgst, "sha256:")
}

// putFile copies the file at src (size bytes) into tw as name.
func putFile(tw *tar.Writer, name, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, size); err != nil {
		return fmt.Errorf("copy %s: %w", name, err)
	}
	return nil
}
