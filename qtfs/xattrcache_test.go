package qtfs_test

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func opCount(t *testing.T, tb *testbed, op string) int64 {
	t.Helper()
	for _, o := range tb.m.Session().Info().Ops {
		if o.Op == op {
			return o.Count
		}
	}
	return 0
}

// TestXattrNegativeCache: a "no such attribute" answer is reused (the
// security.capability probe before every write costs no round trip), yet an
// attribute set locally is seen at once and one set on the host within the
// notification delay (long before the 30 s TTL).
func TestXattrNegativeCache(t *testing.T) {
	tb := newTestbedTTL(t, 30*time.Second)
	must(t, os.WriteFile(tb.host("f"), []byte("x"), 0o644))
	p := tb.dpu("f")
	buf := make([]byte, 64)
	if _, err := unix.Getxattr(p, "user.a", buf); err != unix.ENODATA {
		t.Fatalf("getxattr: %v", err)
	}
	before := opCount(t, tb, "getxattr")
	for i := 0; i < 10; i++ {
		if _, err := unix.Getxattr(p, "user.a", buf); err != unix.ENODATA {
			t.Fatalf("getxattr: %v", err)
		}
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	must(t, err)
	for i := 0; i < 10; i++ {
		f.WriteAt([]byte("y"), int64(i))
	}
	f.Close()
	if n := opCount(t, tb, "getxattr") - before; n > 2 { // at most the first probe of each name (security.capability, …)
		t.Fatalf("%d getxattr round trips for cached absent attributes", n)
	}
	// Set through the mount: visible at once.
	must(t, unix.Setxattr(p, "user.a", []byte("1"), 0))
	if n, err := unix.Getxattr(p, "user.a", buf); err != nil || string(buf[:n]) != "1" {
		t.Fatalf("after local set: %q %v", buf[:n], err)
	}
	must(t, unix.Removexattr(p, "user.a"))
	if _, err := unix.Getxattr(p, "user.a", buf); err != unix.ENODATA {
		t.Fatalf("after local remove: %v", err)
	}
	// Set on the host: the pushed invalidation drops the cached absence.
	time.Sleep(1100 * time.Millisecond) // past the server's own-echo suppression
	must(t, unix.Setxattr(tb.host("f"), "user.a", []byte("2"), 0))
	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := unix.Getxattr(p, "user.a", buf)
		if err == nil && string(buf[:n]) == "2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host xattr not seen with a 30s TTL: %q %v", buf[:n], err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestXattrNegativeCacheTTL: without notifications the TTL bounds how long
// an absent attribute is believed.
func TestXattrNegativeCacheTTL(t *testing.T) {
	tb := newTestbed(t, tbOpts{noNotify: true, ttl: 300 * time.Millisecond})
	must(t, os.WriteFile(tb.host("f"), []byte("x"), 0o644))
	p := tb.dpu("f")
	buf := make([]byte, 64)
	if _, err := unix.Getxattr(p, "user.a", buf); err != unix.ENODATA {
		t.Fatalf("getxattr: %v", err)
	}
	must(t, unix.Setxattr(tb.host("f"), "user.a", []byte("2"), 0))
	time.Sleep(350 * time.Millisecond)
	if n, err := unix.Getxattr(p, "user.a", buf); err != nil || string(buf[:n]) != "2" {
		t.Fatalf("host xattr not seen after the TTL: %q %v", buf[:n], err)
	}
}
