package rexec

import (
	"fmt"
	"net"

	rexecv1 "github.com/dpu-offload/offload/api/rexec/v1"
)

// rawExec sends an exec request on conn and returns the Started reply.
func rawExec(conn net.Conn, path string, args ...string) (*rexecv1.Started, error) {
	req := &rexecv1.ExecRequest{ProtocolVersion: rexecv1.Version_VERSION_1, Path: path, Args: args}
	if err := writeFrame(conn, &rexecv1.ClientFrame{Msg: &rexecv1.ClientFrame_Exec{Exec: req}}); err != nil {
		return nil, err
	}
	f, err := readServerFrame(conn)
	if err != nil {
		return nil, err
	}
	st, ok := f.Msg.(*rexecv1.ServerFrame_Started)
	if !ok {
		return nil, fmt.Errorf("reply %v", f)
	}
	return st.Started, nil
}
