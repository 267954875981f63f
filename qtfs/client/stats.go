package client

import (
	"sync/atomic"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
)

type opStats struct {
	count, errors, totalNs, maxNs atomic.Int64
}

func (o *opStats) record(d time.Duration, failed bool) {
	o.count.Add(1)
	if failed {
		o.errors.Add(1)
	}
	o.totalNs.Add(int64(d))
	for {
		m := o.maxNs.Load()
		if int64(d) <= m || o.maxNs.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// Stats counts requests per operation.
type Stats struct {
	ops          [qtfsv1.NumOps]opStats
	inflight     atomic.Int64
	prefetchHits atomic.Int64
}

// OpInfo is a snapshot of one operation's counters.
type OpInfo struct {
	Op      string        `json:"op"`
	Count   int64         `json:"count"`
	Errors  int64         `json:"errors"`
	AvgTime time.Duration `json:"avg_ns"`
	MaxTime time.Duration `json:"max_ns"`
}

// Info is a snapshot of a session's state.
type Info struct {
	Export     string    `json:"export"`
	Connected  bool      `json:"connected"`
	Since      time.Time `json:"since"`
	Conns      int       `json:"conns"`
	Reconnects int       `json:"reconnects"`
	Epoch      uint64    `json:"epoch"`
	Features   uint64    `json:"features"`
	ReadOnly   bool      `json:"read_only"`
	LastError  string    `json:"last_error,omitempty"`
	InFlight   int64     `json:"in_flight"`
	// PrefetchHits counts lookups answered from a directory listing.
	PrefetchHits int64    `json:"prefetch_hits"`
	Ops          []OpInfo `json:"ops"`
}

// Info returns the session's counters and connection state.
func (s *Session) Info() Info {
	s.mu.Lock()
	in := Info{Export: s.opts.Export, Connected: s.conns != nil, Since: s.connected, Conns: len(s.conns),
		Reconnects: s.reconnects, Epoch: s.epoch, Features: s.features, ReadOnly: s.readOnly, LastError: s.lastErr}
	s.mu.Unlock()
	in.InFlight = s.stats.inflight.Load()
	in.PrefetchHits = s.stats.prefetchHits.Load()
	for op := qtfsv1.OpHello; op.Valid(); op++ {
		o := &s.stats.ops[op]
		n := o.count.Load()
		if n == 0 {
			continue
		}
		in.Ops = append(in.Ops, OpInfo{Op: op.String(), Count: n, Errors: o.errors.Load(),
			AvgTime: time.Duration(o.totalNs.Load() / n), MaxTime: time.Duration(o.maxNs.Load())})
	}
	return in
}
