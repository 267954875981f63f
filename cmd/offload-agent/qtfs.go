package main

import (
	"github.com/dpu-offload/offload/qtfs/server"
)

// newQtfsServer builds the embedded qtfs server; nil without exports.
func newQtfsServer(cfg *server.Config) (*server.Server, error) {
	if cfg == nil || len(cfg.Exports) == 0 {
		return nil, nil
	}
	return server.New(*cfg)
}
