package shim

import (
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// maxAttachFrame is the largest StdioAttach / StdioAttachResponse message
// (docs/runtime-protocol.md).
const maxAttachFrame = runtimev1.MaxStdioHeader

func writeFrame(w io.Writer, m proto.Message) error { return runtimev1.WriteStdioFrame(w, m) }

func readFrame(r io.Reader, m proto.Message) error { return runtimev1.ReadStdioFrame(r, m) }

// readAttachResponse reads the agent's answer to a StdioAttach.
func readAttachResponse(r io.Reader) error {
	var resp runtimev1.StdioAttachResponse
	if err := readFrame(r, &resp); err != nil {
		return err
	}
	if resp.Error != "" {
		return fmt.Errorf("agent refused stdio attach: %s", resp.Error)
	}
	return nil
}
