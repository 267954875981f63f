package bufpool

import (
	"sync"
	"testing"
	"time"
	"unsafe"
)

func TestBuffersAreDistinctAndReused(t *testing.T) {
	const size = 1<<20 + 64<<10
	p := New(size)
	seen := map[uintptr]bool{}
	var bufs [][]byte
	for i := 0; i < 40; i++ { // more than one chunk
		b := p.Get()
		if len(b) != size || cap(b) != size {
			t.Fatalf("len %d cap %d, want %d", len(b), cap(b), size)
		}
		a := uintptr(unsafe.Pointer(&b[0]))
		if seen[a] {
			t.Fatalf("buffer %d handed out twice", i)
		}
		seen[a] = true
		b[0], b[size-1] = byte(i), byte(i) // writable end to end
		bufs = append(bufs, b)
	}
	for i, b := range bufs {
		if b[0] != byte(i) || b[size-1] != byte(i) {
			t.Fatalf("buffer %d overlaps another", i)
		}
	}
	chunks, _, out := p.Stats()
	if chunks != 3 || out != 40 { // 15 buffers of 1088 KiB per 16 MiB chunk
		t.Fatalf("chunks %d out %d, want 3 and 40", chunks, out)
	}
	for _, b := range bufs {
		p.Put(b[:10]) // resliced buffers go back too
	}
	if _, _, out := p.Stats(); out != 0 {
		t.Fatalf("%d still out after Put", out)
	}
	for i := 0; i < 40; i++ {
		if b := p.Get(); !seen[uintptr(unsafe.Pointer(&b[0]))] {
			t.Fatal("Get mapped new memory although free buffers were there")
		}
	}
	if chunks, _, _ := p.Stats(); chunks != 3 {
		t.Fatalf("%d chunks after reuse, want 3", chunks)
	}
}

func TestForeignAndDoublePut(t *testing.T) {
	p := New(4096)
	p.Put(make([]byte, 4096)) // not ours: ignored
	p.Put(nil)
	b := p.Get()
	p.Put(b)
	defer func() {
		if recover() == nil {
			t.Fatal("second Put of the same buffer did not panic")
		}
	}()
	p.Put(b)
}

func TestIdleChunkReleasesMemory(t *testing.T) {
	old := IdleRelease
	IdleRelease = 50 * time.Millisecond
	defer func() { IdleRelease = old }()
	p := New(1 << 20)
	b := p.Get()
	b[0] = 1
	p.Put(b)
	// Busy again before the timer: it must not release under a user.
	b = p.Get()
	time.Sleep(120 * time.Millisecond)
	if _, resident, _ := p.Stats(); resident != 1 {
		t.Fatal("chunk released while a buffer was out")
	}
	p.Put(b)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, resident, _ := p.Stats(); resident == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle chunk kept its memory")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b = p.Get() // the addresses stay valid: it faults in again
	b[0] = 2
	if b[0] != 2 {
		t.Fatal("released chunk not usable")
	}
	p.Put(b)
}

func TestConcurrentUse(t *testing.T) {
	p := New(256 << 10)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				b := p.Get()
				b[0], b[len(b)-1] = byte(g), byte(g)
				if b[0] != byte(g) || b[len(b)-1] != byte(g) {
					t.Error("buffer shared between goroutines")
					return
				}
				p.Put(b)
			}
		}(g)
	}
	wg.Wait()
}
