package escape

import (
	"os"
	"testing"
)

// TestExternal runs the corpus against a mount named in the environment:
//
//	ESCAPE_MNT=/m/n/t ESCAPE_EXPORT=/srv/export ESCAPE_OUTSIDE=/srv/outside \
//	[ESCAPE_RO=1] [ESCAPE_NODEV=1] go test ./tests/escape -run TestExternal -v
func TestExternal(t *testing.T) {
	l := Layout{
		Mount:      os.Getenv("ESCAPE_MNT"),
		HostExport: os.Getenv("ESCAPE_EXPORT"),
		Outside:    os.Getenv("ESCAPE_OUTSIDE"),
		ReadOnly:   os.Getenv("ESCAPE_RO") != "",
		NoDev:      os.Getenv("ESCAPE_NODEV") != "",
	}
	if l.Mount == "" || l.HostExport == "" || l.Outside == "" {
		t.Skip("set ESCAPE_MNT, ESCAPE_EXPORT and ESCAPE_OUTSIDE to run the corpus against a mount")
	}
	RunLayout(t, l)
}
