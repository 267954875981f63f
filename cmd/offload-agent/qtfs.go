package main

import (
	"errors"
	"net"
)

// qtfsConfig stands in for qtfs/server.Config until that package lands in
// the tree: a [qtfs] table is accepted only when it exports nothing.
type qtfsConfig struct {
	Export []map[string]any `toml:"export"`
}

type qtfsServer interface {
	Serve(net.Listener) error
	Close() error
}

func newQtfsServer(cfg *qtfsConfig) (qtfsServer, error) {
	if cfg == nil || len(cfg.Export) == 0 {
		return nil, nil
	}
	return nil, errors.New("[qtfs] exports configured, but this offload-agent was built without the qtfs server")
}
