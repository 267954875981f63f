package client

import (
	"net"
	"testing"
	"time"

	qtfsv1 "github.com/dpu-offload/offload/api/qtfs/v1"
)

// A caller that gives up on a request (timeout) must not strand the reply's
// pooled buffer when the reader already took the request from pending.
func TestAbandonReleasesReplyInFlight(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { // the "server": swallow whatever is sent
		buf := make([]byte, 4096)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	c := newWireConn(a, nil)
	_, _, out0 := bigBufs.Stats()

	// The reader has taken the request and is delivering its reply.
	id, ch, err := c.send(&qtfsv1.Request{Op: qtfsv1.OpPing}, false)
	if err != nil {
		t.Fatal(err)
	}
	c.forget(id)
	f := &frame{big: bigBufs.Get()}
	c.abandon(id, ch)
	ch <- f
	// Still waiting in pending: nothing arrives, nothing to release.
	id2, ch2, err := c.send(&qtfsv1.Request{Op: qtfsv1.OpPing}, false)
	if err != nil {
		t.Fatal(err)
	}
	c.abandon(id2, ch2)
	if _, ok := c.pending[id2]; ok {
		t.Fatal("abandoned request still pending")
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, out := bigBufs.Stats(); out == out0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("reply buffer of the abandoned request was not released")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
