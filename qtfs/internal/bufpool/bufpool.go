// Package bufpool hands out the large buffers qtfs moves file data through
// (read replies, write requests: up to 1 MiB each), from memory mapped
// outside the Go heap in 2 MiB-aligned chunks that the kernel may back with
// transparent huge pages.
//
// Why not sync.Pool and make: a fresh 1 MiB heap buffer costs 256 page
// faults when it is first filled, and sync.Pool drops its buffers at every
// other garbage collection, so a busy mount or server keeps faulting in new
// ones. On the development VM a page fault costs several µs and faults were
// ~17% of both processes' CPU in an uncached sequential read over a unix
// socket. Huge-page-backed chunks fault once per 2 MiB and stay mapped; a
// chunk idle for IdleRelease gives its memory back to the kernel
// (MADV_DONTNEED) but keeps its addresses, so a buffer can never point at
// unmapped memory.
package bufpool

import (
	"math/bits"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	hugePage  = 2 << 20
	chunkSize = 16 << 20
)

// IdleRelease is how long a chunk with no buffer in use keeps its memory.
var IdleRelease = 30 * time.Second

// Pool is a set of buffers of one size. The zero value is not usable; see New.
type Pool struct {
	size int
	per  int // buffers per chunk (≤ 64)

	mu     sync.Mutex
	chunks []*chunk
}

type chunk struct {
	mem       []byte
	base      uintptr
	free      uint64 // bit i set: buffer i is free
	out       int
	idleSince time.Time
	timer     *time.Timer // releases the memory of an idle chunk
	armed     bool        // timer pending
	resident  bool        // memory may be resident (not released since last use)
}

// New returns a pool of buffers of size bytes (at most 16 MiB).
func New(size int) *Pool {
	if size <= 0 || size > chunkSize {
		panic("bufpool: bad buffer size")
	}
	per := chunkSize / size
	if per > 64 {
		per = 64
	}
	return &Pool{size: size, per: per}
}

// Size is the length of every buffer of the pool.
func (p *Pool) Size() int { return p.size }

// Get returns a buffer of Size bytes (contents undefined). It must be given
// back with Put once nothing refers to it any more.
func (p *Pool) Get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.chunks {
		if c.free != 0 {
			return p.take(c)
		}
	}
	c := p.newChunk()
	if c == nil {
		// No mapping (address-space limits): an ordinary heap buffer,
		// which Put lets the garbage collector have.
		return make([]byte, p.size)
	}
	p.chunks = append(p.chunks, c)
	return p.take(c)
}

func (p *Pool) take(c *chunk) []byte {
	i := bits.TrailingZeros64(c.free)
	c.free &^= 1 << i
	c.out++
	c.resident = true
	off := i * p.size
	return c.mem[off : off+p.size : off+p.size]
}

func (p *Pool) newChunk() *chunk {
	// Map one huge page more than needed and trim, so the chunk starts on
	// a 2 MiB boundary and its huge pages can be used.
	m, err := unix.Mmap(-1, 0, chunkSize+hugePage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil
	}
	addr := uintptr(unsafe.Pointer(&m[0]))
	head := int((hugePage - addr%hugePage) % hugePage)
	mem := m[head : head+chunkSize : head+chunkSize]
	if head > 0 {
		unix.Munmap(m[:head])
	}
	if tail := m[head+chunkSize:]; len(tail) > 0 {
		unix.Munmap(tail)
	}
	unix.Madvise(mem, unix.MADV_HUGEPAGE) // best effort: THP may be off
	c := &chunk{mem: mem, base: uintptr(unsafe.Pointer(&mem[0])), free: 1<<p.per - 1}
	if p.per == 64 {
		c.free = ^uint64(0)
	}
	return c
}

// Put gives b (a buffer from Get, possibly resliced) back to the pool.
// Buffers the pool did not hand out are ignored.
func (p *Pool) Put(b []byte) {
	if cap(b) == 0 {
		return
	}
	addr := uintptr(unsafe.Pointer(&b[:1][0]))
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.chunks {
		if addr < c.base || addr >= c.base+chunkSize {
			continue
		}
		off := int(addr - c.base)
		i := off / p.size
		if off%p.size != 0 || i >= p.per || c.free&(1<<i) != 0 {
			panic("bufpool: Put of a buffer that is not out")
		}
		c.free |= 1 << i
		c.out--
		if c.out == 0 {
			c.idleSince = time.Now()
			p.armRelease(c)
		}
		return
	}
}

// armRelease makes sure a timer will release c's memory once it has been
// idle for IdleRelease: one pending timer per chunk, which re-arms itself
// while the chunk keeps being used, rather than one timer per Put.
func (p *Pool) armRelease(c *chunk) {
	if c.armed {
		return
	}
	c.armed = true
	if c.timer == nil {
		c.timer = time.AfterFunc(IdleRelease, func() { p.release(c) })
	} else {
		c.timer.Reset(IdleRelease)
	}
}

func (p *Pool) release(c *chunk) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.armed = false
	if c.out > 0 || !c.resident {
		return // busy again: its next idle period arms the timer again
	}
	if d := time.Until(c.idleSince.Add(IdleRelease)); d > 0 {
		c.armed = true
		c.timer.Reset(d)
		return
	}
	unix.Madvise(c.mem, unix.MADV_DONTNEED)
	c.resident = false
}

// Stats reports the pool's chunks, how many of them hold memory, and the
// buffers in use (for tests and `qtfs info`).
func (p *Pool) Stats() (chunks, resident, out int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.chunks {
		if c.resident {
			resident++
		}
		out += c.out
	}
	return len(p.chunks), resident, out
}
