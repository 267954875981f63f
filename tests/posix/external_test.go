package posix

import (
	"os"
	"strings"
	"testing"
)

// TestExternal runs the suite against directories named in the environment,
// for use by hand against any mount:
//
//	POSIX_MNT=/mnt/x POSIX_REF=/srv/ref [POSIX_HOSTDIR=/srv/export] \
//	[POSIX_KNOWN=case1,case2] go test ./tests/posix -run TestExternal -v
func TestExternal(t *testing.T) {
	mnt, ref := os.Getenv("POSIX_MNT"), os.Getenv("POSIX_REF")
	if mnt == "" || ref == "" {
		t.Skip("set POSIX_MNT and POSIX_REF to run the suite against a mount")
	}
	opts := Options{HostDir: os.Getenv("POSIX_HOSTDIR"), Known: map[string]string{}}
	if k := os.Getenv("POSIX_KNOWN"); k != "" {
		for _, n := range strings.Split(k, ",") {
			opts.Known[n] = "listed in POSIX_KNOWN"
		}
	}
	CheckWith(t, mnt, ref, opts)
	if os.Getenv("POSIX_GOFUSE") != "" {
		RunGoFusePosixtest(t, mnt, GoFusePosixtestSkips)
	}
}
