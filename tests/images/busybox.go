package images

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultBusybox is where Debian's busybox-static installs its binary.
const DefaultBusybox = "/bin/busybox"

// UserUID is the unprivileged user every image has in /etc/passwd.
const UserUID = 1000

const imagePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

const passwd = `root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
`

const group = `root:x:0:
user:x:1000:
nogroup:x:65534:
`

// busyboxInput is the static busybox binary and the applet paths it
// provides (relative, e.g. "bin/ls").
type busyboxInput struct {
	binary  []byte
	applets []string
	sum     string
}

func readBusybox(bin string) (*busyboxInput, error) {
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read busybox (Debian package busybox-static): %w", err)
	}
	out, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", bin, err)
	}
	var applets []string
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line == "bin/busybox" || strings.Contains(line, "..") || path.IsAbs(line) {
			continue
		}
		applets = append(applets, line)
	}
	sort.Strings(applets)
	sum := sha256.Sum256(b)
	return &busyboxInput{binary: b, applets: applets, sum: hex.EncodeToString(sum[:])}, nil
}

// baseLayer is the busybox root filesystem: busybox, its applet symlinks,
// /etc/passwd and /etc/group with root and a uid-1000 user, and the empty
// mount point directories a runtime expects.
func (in *busyboxInput) baseLayer() Layer {
	return Layer{
		Comment: "busybox-static root filesystem",
		Write: func(w *LayerWriter) error {
			dirs := map[string]bool{}
			for _, d := range []string{"bin", "dev", "etc", "home", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "var"} {
				dirs[d] = true
			}
			for _, a := range in.applets {
				for d := path.Dir(a); d != "."; d = path.Dir(d) {
					dirs[d] = true
				}
			}
			var sorted []string
			for d := range dirs {
				sorted = append(sorted, d)
			}
			sort.Strings(sorted)
			for _, d := range sorted {
				if err := w.Dir(d, 0o755, 0, 0); err != nil {
					return err
				}
			}
			special := []struct {
				name     string
				mode     int64
				uid, gid int
			}{
				{"home/user", 0o755, UserUID, UserUID},
				{"root", 0o700, 0, 0},
				{"tmp", 0o1777, 0, 0},
				{"var/tmp", 0o1777, 0, 0},
			}
			for _, d := range special {
				if err := w.Dir(d.name, d.mode, d.uid, d.gid); err != nil {
					return err
				}
			}
			if err := w.File("bin/busybox", 0o755, in.binary); err != nil {
				return err
			}
			if err := w.File("etc/group", 0o644, []byte(group)); err != nil {
				return err
			}
			if err := w.File("etc/passwd", 0o644, []byte(passwd)); err != nil {
				return err
			}
			if err := w.File("etc/hosts", 0o644, []byte("127.0.0.1\tlocalhost\n::1\tlocalhost\n")); err != nil {
				return err
			}
			for _, a := range in.applets {
				if err := w.Symlink(a, "/bin/busybox"); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func shellConfig() ocispec.ImageConfig {
	return ocispec.ImageConfig{
		Env:        []string{"PATH=" + imagePath},
		Cmd:        []string{"/bin/sh"},
		WorkingDir: "/",
	}
}

// Busybox returns the localhost/offload/busybox:latest image built from the
// static busybox binary at bin.
func Busybox(bin string) (Image, error) {
	in, err := readBusybox(bin)
	if err != nil {
		return Image{}, err
	}
	return Image{
		Ref:    BusyboxRef,
		Key:    "busybox " + in.sum,
		Layers: []Layer{in.baseLayer()},
		Config: shellConfig(),
	}, nil
}

// BigParams sizes the big image's generated layers. Every file's size and
// content come from PRNGs with fixed seeds.
type BigParams struct {
	SmallFiles           int // text files in the "small files" layer
	SmallMin, SmallMax   int // their size range in bytes
	MediumFiles          int // files of mixed text and random bytes
	MediumMin, MediumMax int
	LargeFiles           int // incompressible files (like binaries or compressed data)
	LargeSize            int
	FilesPerDir          int
}

// DefaultBig is the size of localhost/offload/big:latest: about 140 MB
// uncompressed in 6,500 files over four layers.
var DefaultBig = BigParams{
	SmallFiles: 5000, SmallMin: 256, SmallMax: 6144,
	MediumFiles: 1500, MediumMin: 16 << 10, MediumMax: 40 << 10,
	LargeFiles: 5, LargeSize: 16 << 20,
	FilesPerDir: 100,
}

// MinBytes is a lower bound of the generated file content in bytes.
func (p BigParams) MinBytes() int64 {
	return int64(p.SmallFiles)*int64(p.SmallMin) + int64(p.MediumFiles)*int64(p.MediumMin) + int64(p.LargeFiles)*int64(p.LargeSize)
}

// Big returns the localhost/offload/big:latest image: the busybox layer and
// three generated layers with p's files.
func Big(bin string, p BigParams) (Image, error) {
	in, err := readBusybox(bin)
	if err != nil {
		return Image{}, err
	}
	if p.FilesPerDir <= 0 {
		p.FilesPerDir = 100
	}
	return Image{
		Ref: BigRef,
		Key: fmt.Sprintf("big %s %+v", in.sum, p),
		Layers: []Layer{
			in.baseLayer(),
			generatedLayer("small text files", "data/small", 1, p.SmallFiles, p.SmallMin, p.SmallMax, p.FilesPerDir, 1.0),
			generatedLayer("medium mixed files", "data/medium", 2, p.MediumFiles, p.MediumMin, p.MediumMax, p.FilesPerDir, 0.5),
			generatedLayer("large incompressible files", "data/large", 3, p.LargeFiles, p.LargeSize, p.LargeSize, p.FilesPerDir, 0),
		},
		Config: shellConfig(),
	}, nil
}

// generatedLayer makes n files under root, spread over directories of
// perDir files, with sizes in [min, max] and content that is textFraction
// text (compressible) and the rest random bytes.
func generatedLayer(comment, root string, seed uint64, n, min, max, perDir int, textFraction float64) Layer {
	return Layer{
		Comment: comment,
		Write: func(w *LayerWriter) error {
			sizes := rand.New(rand.NewPCG(seed, 0x0ff10ad))
			var key [32]byte
			key[0] = byte(seed)
			content := rand.NewChaCha8(key)
			for _, d := range []string{"data", root} {
				if err := w.Dir(d, 0o755, 0, 0); err != nil {
					return err
				}
			}
			var buf bytes.Buffer
			for i := 0; i < n; i++ {
				if i%perDir == 0 {
					if err := w.Dir(fmt.Sprintf("%s/d%03d", root, i/perDir), 0o755, 0, 0); err != nil {
						return err
					}
				}
				size := min
				if max > min {
					size += sizes.IntN(max - min + 1)
				}
				name := fmt.Sprintf("%s/d%03d/f%05d", root, i/perDir, i)
				text := int(float64(size) * textFraction)
				if text == 0 {
					if err := w.FileFrom(name, 0o644, int64(size), content); err != nil {
						return err
					}
					continue
				}
				buf.Reset()
				buf.Write(textBytes(content, text))
				raw := make([]byte, size-text)
				content.Read(raw)
				buf.Write(raw)
				if err := w.File(name, 0o644, buf.Bytes()); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
