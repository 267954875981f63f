// Package qtfs benchmarks qtfs against a native directory, a go-fuse
// loopback mount (no network) and sshfs over a veth between two network
// namespaces, on the same tmpfs export in one run, and checks the targets of
// DESIGN.md §5. The benchmarks carry the e2e build tag; run them with
// `make bench-qtfs`. docs/qtfs-bench.md explains every number.
package qtfs
