package qtfsv1

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrShort is returned when a payload ends before its layout does.
var ErrShort = errors.New("qtfs: truncated payload")

// Enc appends little-endian fields to a byte slice.
type Enc struct{ B []byte }

func (e *Enc) U8(v uint8)   { e.B = append(e.B, v) }
func (e *Enc) U16(v uint16) { e.B = binary.LittleEndian.AppendUint16(e.B, v) }
func (e *Enc) U32(v uint32) { e.B = binary.LittleEndian.AppendUint32(e.B, v) }
func (e *Enc) U64(v uint64) { e.B = binary.LittleEndian.AppendUint64(e.B, v) }

// Str appends a u16-length-prefixed string.
func (e *Enc) Str(s string) {
	e.U16(uint16(len(s)))
	e.B = append(e.B, s...)
}

// Blob appends a u32-length-prefixed byte slice.
func (e *Enc) Blob(b []byte) {
	e.U32(uint32(len(b)))
	e.B = append(e.B, b...)
}

// Dec reads little-endian fields; the first error sticks and later reads
// return zero values.
type Dec struct {
	B   []byte
	Err error
}

func (d *Dec) take(n int) []byte {
	if d.Err != nil {
		return nil
	}
	if n < 0 || len(d.B) < n {
		d.Err = ErrShort
		return nil
	}
	b := d.B[:n]
	d.B = d.B[n:]
	return b
}

func (d *Dec) U8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *Dec) U16() uint16 {
	if b := d.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *Dec) U32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *Dec) U64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// Str reads a u16-length-prefixed string of at most max bytes.
func (d *Dec) Str(max int) string {
	n := int(d.U16())
	if d.Err == nil && n > max {
		d.Err = fmt.Errorf("qtfs: string of %d bytes exceeds %d", n, max)
		return ""
	}
	return string(d.take(n))
}

// Blob reads a u32-length-prefixed byte slice of at most max bytes. The result
// aliases the payload (no copy: read data goes straight to the kernel).
func (d *Dec) Blob(max int) []byte {
	n := d.U32()
	if d.Err == nil && n > uint32(max) {
		d.Err = fmt.Errorf("qtfs: blob of %d bytes exceeds %d", n, max)
		return nil
	}
	return d.take(int(n))
}

// Count reads a u32 element count, bounded by the bytes left divided by the
// smallest encoded element, so a forged count cannot force a huge allocation.
func (d *Dec) Count(minElem int) int {
	n := d.U32()
	if d.Err == nil && uint64(n)*uint64(minElem) > uint64(len(d.B)) {
		d.Err = fmt.Errorf("qtfs: count %d exceeds payload", n)
		return 0
	}
	return int(n)
}

// Done reports an error if bytes are left over or a read failed.
func (d *Dec) Done() error {
	if d.Err != nil {
		return d.Err
	}
	if len(d.B) != 0 {
		return fmt.Errorf("qtfs: %d trailing bytes", len(d.B))
	}
	return nil
}
