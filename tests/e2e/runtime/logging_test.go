//go:build e2e

package runtime

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// loggerScript is a binary:// logger: fd 3 and 4 carry the container's
// stdout and stderr, fd 5 is the ready pipe; it writes them to $2/out and
// $2/err (the URI query dir=… becomes the arguments "dir" "…").
const loggerScript = `#!/bin/sh
/bin/cat <&3 >"$2/out" 4<&- 5>&- &
/bin/cat <&4 >"$2/err" 3<&- 5>&- &
exec 3<&- 4<&-
echo "$CONTAINER_NAMESPACE/$CONTAINER_ID" >"$2/env"
printf r >&5
exec 5>&-
wait
`

// sh runs a shell script on r's side and returns its stdout.
func (r rt) sh(t *testing.T, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := r.side(ctx, "sh", "-c", script).Output()
	if err != nil {
		t.Fatalf("%s: sh -c %q: %v", r.name, script, err)
	}
	return string(out)
}

// Log URIs: the logger binary (binary://, binary-v2://) and file:// run on the
// side of the containerd that asked for them — for offload, the DPU.
func TestLogURIs(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, r rt) {
		dir := fmt.Sprintf("/tmp/e2e-log-%s-%d", r.name, os.Getpid())
		r.sh(t, fmt.Sprintf("mkdir -p %s && cat >%s/logger.sh <<'EOF'\n%sEOF\nchmod +x %s/logger.sh", dir, dir, loggerScript, dir))
		t.Cleanup(func() { r.sh(t, "rm -rf "+dir) })
		for _, scheme := range []string{"binary", "binary-v2"} {
			id := newID(t, r, "log"+strings.ReplaceAll(scheme, "-", ""))
			res := r.run(t, id, []string{"--log-uri", fmt.Sprintf("%s://%s/logger.sh?dir=%s", scheme, dir, dir)},
				"sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 2")
			if res.code != 2 {
				t.Errorf("%s: ctr exited %d (%s)", scheme, res.code, res.stderr)
			}
			got := r.sh(t, fmt.Sprintf("cat %s/out; echo ---; cat %s/err; echo ---; cat %s/env", dir, dir, dir))
			if want := "to-stdout\n---\nto-stderr\n---\ndefault/" + id + "\n"; got != want {
				t.Errorf("%s logger wrote %q, want %q", scheme, got, want)
			}
		}
		id := newID(t, r, "logfile")
		res := r.run(t, id, []string{"--log-uri", "file://" + dir + "/file.log"}, "sh", "-c", "echo line1; echo line2 >&2")
		if res.code != 0 {
			t.Errorf("file://: ctr exited %d (%s)", res.code, res.stderr)
		}
		got := r.sh(t, "sort "+dir+"/file.log")
		if got != "line1\nline2\n" {
			t.Errorf("file:// log %q", got)
		}
		if r.offload {
			// The log files exist only on the DPU side.
			if _, err := os.Stat(dir + "/file.log"); err == nil {
				t.Errorf("%s/file.log exists on the host", dir)
			}
		}
	})
}
