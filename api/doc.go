// Package api holds the wire contract between the DPU side (shim, qtfs client,
// rexec client) and the host side (offload-agent). It is the only code both
// sides import: protobuf messages and ttrpc services under versioned
// sub-packages, and transport (addresses, mTLS, channel preface).
package api
