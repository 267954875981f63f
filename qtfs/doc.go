// Package qtfs is the shared file system of dpu-offload: the host's
// directories appear on the DPU at the same paths. The wire protocol is in
// api/qtfs/v1, the host server in qtfs/server and the DPU FUSE client in
// qtfs/client; this package holds the tests that mount for real.
package qtfs
