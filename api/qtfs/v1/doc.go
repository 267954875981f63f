// Package qtfsv1 is the qtfs wire protocol, version 1: a compact binary framing
// of handle-based file-system requests between the DPU client and the host
// server. docs/qtfs-protocol.md is the normative specification; this package is
// the only code both sides share.
//
// A frame is a 16-byte header (payload length, opcode, flags, request id)
// followed by a payload whose layout is fixed per opcode (see layout.go). Every
// decoder here validates lengths before allocating and returns an error, never
// panics, on malformed input.
package qtfsv1
