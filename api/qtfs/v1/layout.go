package qtfsv1

import "fmt"

type field uint8

const (
	fNode field = iota + 1
	fNode2
	fFh
	fFh2
	fOff
	fOff2
	fLen
	fFlags
	fMode
	fRdev
	fValid
	fUid
	fGid
	fAtime
	fMtime
	fOwner
	fCaller
	fLock
	fName
	fName2
	fData
	fForgets
	fHello
	// reply fields
	fEntry
	fAttr
	fN
	fStatfs
	fDirents
	fHelloReply
	fParent
)

// reqLayout lists, per opcode, the request fields in wire order.
var reqLayout = [opMax][]field{
	OpHello:            {fHello},
	OpPing:             {},
	OpLookup:           {fNode, fName},
	OpForget:           {fForgets},
	OpGetAttr:          {fNode, fFh},
	OpSetAttr:          {fNode, fFh, fValid, fMode, fUid, fGid, fLen, fAtime, fMtime, fCaller},
	OpReadlink:         {fNode},
	OpSymlink:          {fNode, fName, fName2, fCaller},
	OpMknod:            {fNode, fName, fMode, fRdev, fCaller},
	OpMkdir:            {fNode, fName, fMode, fCaller},
	OpUnlink:           {fNode, fName},
	OpRmdir:            {fNode, fName},
	OpRename:           {fNode, fName, fNode2, fName2, fFlags},
	OpLink:             {fNode, fNode2, fName},
	OpOpen:             {fNode, fFlags, fCaller},
	OpCreate:           {fNode, fName, fFlags, fMode, fCaller},
	OpRead:             {fFh, fOff, fLen},
	OpWrite:            {fFh, fOff, fFlags, fData},
	OpRelease:          {fFh},
	OpFlush:            {fFh, fOwner},
	OpFsync:            {fFh, fFlags},
	OpOpenDir:          {fNode},
	OpReadDir:          {fFh, fOff, fLen, fFlags},
	OpReleaseDir:       {fFh},
	OpStatFs:           {fNode},
	OpSetXattr:         {fNode, fName, fFlags, fData},
	OpGetXattr:         {fNode, fName, fLen},
	OpListXattr:        {fNode, fLen},
	OpRemoveXattr:      {fNode, fName},
	OpAccess:           {fNode, fMode, fCaller},
	OpFallocate:        {fFh, fMode, fOff, fLen},
	OpLseek:            {fFh, fOff, fFlags},
	OpCopyFileRange:    {fFh, fOff, fFh2, fOff2, fLen, fFlags},
	OpGetLk:            {fFh, fOwner, fLock, fFlags},
	OpSetLk:            {fFh, fOwner, fLock, fFlags},
	OpSetLkw:           {fFh, fOwner, fLock, fFlags},
	OpNotifyInvalEntry: {fNode, fName},
	OpNotifyInvalInode: {fNode, fOff, fLen},
	OpInterrupt:        {fOff},
}

// replyLayout lists, per opcode, the fields of a successful reply.
var replyLayout = [opMax][]field{
	OpHello:         {fHelloReply},
	OpPing:          {},
	OpLookup:        {fEntry},
	OpGetAttr:       {fAttr},
	OpSetAttr:       {fAttr},
	OpReadlink:      {fData},
	OpSymlink:       {fEntry, fParent},
	OpMknod:         {fEntry, fParent},
	OpMkdir:         {fEntry, fParent},
	OpUnlink:        {fParent},
	OpRmdir:         {fParent},
	OpRename:        {},
	OpLink:          {fEntry, fParent},
	OpOpen:          {fFh},
	OpCreate:        {fEntry, fFh, fParent},
	OpRead:          {fData},
	OpWrite:         {fN},
	OpRelease:       {},
	OpFlush:         {},
	OpFsync:         {},
	OpOpenDir:       {fFh},
	OpReadDir:       {fDirents},
	OpReleaseDir:    {},
	OpStatFs:        {fStatfs},
	OpSetXattr:      {},
	OpGetXattr:      {fN, fData},
	OpListXattr:     {fN, fData},
	OpRemoveXattr:   {},
	OpAccess:        {},
	OpFallocate:     {},
	OpLseek:         {fN},
	OpCopyFileRange: {fN},
	OpGetLk:         {fLock},
	OpSetLk:         {},
	OpSetLkw:        {},
}

func putTime(e *Enc, t Timespec) { e.U64(uint64(t.Sec)); e.U32(t.Nsec) }

func getTime(d *Dec) Timespec {
	t := Timespec{Sec: int64(d.U64()), Nsec: d.U32()}
	if d.Err == nil && t.Nsec >= 1e9 {
		d.Err = fmt.Errorf("qtfs: nanoseconds %d out of range", t.Nsec)
	}
	return t
}

// AttrSize is the encoded size of an Attr.
const AttrSize = 3*8 + 3*12 + 6*4

func putAttr(e *Enc, a *Attr) {
	e.U64(a.Ino)
	e.U64(a.Size)
	e.U64(a.Blocks)
	putTime(e, a.Atime)
	putTime(e, a.Mtime)
	putTime(e, a.Ctime)
	e.U32(a.Mode)
	e.U32(a.Nlink)
	e.U32(a.Uid)
	e.U32(a.Gid)
	e.U32(a.Rdev)
	e.U32(a.Blksize)
}

func getAttr(d *Dec, a *Attr) {
	a.Ino = d.U64()
	a.Size = d.U64()
	a.Blocks = d.U64()
	a.Atime = getTime(d)
	a.Mtime = getTime(d)
	a.Ctime = getTime(d)
	a.Mode = d.U32()
	a.Nlink = d.U32()
	a.Uid = d.U32()
	a.Gid = d.U32()
	a.Rdev = d.U32()
	a.Blksize = d.U32()
}

func putLock(e *Enc, l *Lock) { e.U64(l.Start); e.U64(l.End); e.U32(l.Type); e.U32(l.Pid) }
func getLock(d *Dec, l *Lock) { l.Start = d.U64(); l.End = d.U64(); l.Type = d.U32(); l.Pid = d.U32() }

// EncodeRequest appends r's body to b. Data is not appended: it is returned so
// the caller can write it with writev (WriteFrame) without copying.
func EncodeRequest(b []byte, r *Request) (body, data []byte, err error) {
	if !r.Op.Valid() {
		return nil, nil, fmt.Errorf("qtfs: encode: unknown opcode %d", r.Op)
	}
	e := Enc{B: b}
	for _, f := range reqLayout[r.Op] {
		switch f {
		case fNode:
			e.U64(r.Node)
		case fNode2:
			e.U64(r.Node2)
		case fFh:
			e.U64(r.Fh)
		case fFh2:
			e.U64(r.Fh2)
		case fOff:
			e.U64(r.Off)
		case fOff2:
			e.U64(r.Off2)
		case fLen:
			e.U64(r.Len)
		case fFlags:
			e.U32(r.Flags)
		case fMode:
			e.U32(r.Mode)
		case fRdev:
			e.U32(r.Rdev)
		case fValid:
			e.U32(r.Valid)
		case fUid:
			e.U32(r.Uid)
		case fGid:
			e.U32(r.Gid)
		case fAtime:
			putTime(&e, r.Atime)
		case fMtime:
			putTime(&e, r.Mtime)
		case fOwner:
			e.U64(r.Owner)
		case fCaller:
			e.U32(r.Caller.Uid)
			e.U32(r.Caller.Gid)
			e.U32(r.Caller.Pid)
		case fLock:
			putLock(&e, &r.Lock)
		case fName:
			if len(r.Name) > MaxName {
				return nil, nil, fmt.Errorf("qtfs: name too long")
			}
			e.Str(r.Name)
		case fName2:
			if len(r.Name2) > MaxName {
				return nil, nil, fmt.Errorf("qtfs: name too long")
			}
			e.Str(r.Name2)
		case fData:
			if len(r.Data) > MaxData {
				return nil, nil, fmt.Errorf("qtfs: data of %d bytes exceeds %d", len(r.Data), MaxData)
			}
			e.U32(uint32(len(r.Data)))
			data = r.Data
		case fForgets:
			if len(r.Forgets) > MaxForgets {
				return nil, nil, fmt.Errorf("qtfs: too many forgets")
			}
			e.U32(uint32(len(r.Forgets)))
			for _, f := range r.Forgets {
				e.U64(f.Node)
				e.U64(f.N)
			}
		case fHello:
			h := &r.Hello
			e.U32(h.Magic)
			e.U32(h.Version)
			e.U64(h.Features)
			e.B = append(e.B, h.Session[:]...)
			e.Str(h.Export)
		}
	}
	return e.B, data, nil
}

// DecodeRequest parses a request body for op. Data aliases b.
func DecodeRequest(op Op, b []byte, r *Request) error {
	if !op.Valid() {
		return fmt.Errorf("qtfs: decode: unknown opcode %d", op)
	}
	*r = Request{Op: op}
	d := Dec{B: b}
	for _, f := range reqLayout[op] {
		switch f {
		case fNode:
			r.Node = d.U64()
		case fNode2:
			r.Node2 = d.U64()
		case fFh:
			r.Fh = d.U64()
		case fFh2:
			r.Fh2 = d.U64()
		case fOff:
			r.Off = d.U64()
		case fOff2:
			r.Off2 = d.U64()
		case fLen:
			r.Len = d.U64()
		case fFlags:
			r.Flags = d.U32()
		case fMode:
			r.Mode = d.U32()
		case fRdev:
			r.Rdev = d.U32()
		case fValid:
			r.Valid = d.U32()
		case fUid:
			r.Uid = d.U32()
		case fGid:
			r.Gid = d.U32()
		case fAtime:
			r.Atime = getTime(&d)
		case fMtime:
			r.Mtime = getTime(&d)
		case fOwner:
			r.Owner = d.U64()
		case fCaller:
			r.Caller = Caller{Uid: d.U32(), Gid: d.U32(), Pid: d.U32()}
		case fLock:
			getLock(&d, &r.Lock)
		case fName:
			r.Name = d.Str(MaxName)
		case fName2:
			r.Name2 = d.Str(MaxName)
		case fData:
			r.Data = d.Blob(MaxData)
		case fForgets:
			n := d.Count(16)
			if d.Err == nil && n > MaxForgets {
				d.Err = fmt.Errorf("qtfs: %d forgets exceed %d", n, MaxForgets)
			}
			if d.Err == nil && n > 0 {
				r.Forgets = make([]Forget, n)
				for i := range r.Forgets {
					r.Forgets[i] = Forget{Node: d.U64(), N: d.U64()}
				}
			}
		case fHello:
			h := &r.Hello
			h.Magic = d.U32()
			h.Version = d.U32()
			h.Features = d.U64()
			copy(h.Session[:], d.take(16))
			h.Export = d.Str(MaxName)
		}
	}
	if err := d.Done(); err != nil {
		return fmt.Errorf("decode %s request: %w", op, err)
	}
	return nil
}

// EncodeReply appends a reply body for op to b; Data is returned separately
// as in EncodeRequest.
func EncodeReply(b []byte, op Op, r *Reply) (body, data []byte, err error) {
	if !op.Valid() {
		return nil, nil, fmt.Errorf("qtfs: encode: unknown opcode %d", op)
	}
	e := Enc{B: b}
	e.U32(r.Errno)
	if r.Errno != 0 {
		return e.B, nil, nil
	}
	for _, f := range replyLayout[op] {
		switch f {
		case fEntry:
			e.U64(r.Entry.Node)
			putAttr(&e, &r.Entry.Attr)
		case fAttr:
			putAttr(&e, &r.Attr)
		case fParent:
			putAttr(&e, &r.Parent)
		case fFh:
			e.U64(r.Fh)
		case fN:
			e.U64(r.N)
		case fLock:
			putLock(&e, &r.Lock)
		case fStatfs:
			s := &r.Statfs
			for _, v := range []uint64{s.Blocks, s.Bfree, s.Bavail, s.Files, s.Ffree} {
				e.U64(v)
			}
			e.U32(s.Bsize)
			e.U32(s.NameLen)
			e.U32(s.Frsize)
		case fDirents:
			if r.Plus {
				e.U8(1)
			} else {
				e.U8(0)
			}
			e.U32(uint32(len(r.Dirents)))
			for i := range r.Dirents {
				de := &r.Dirents[i]
				e.U64(de.Ino)
				e.U64(de.Off)
				e.U32(de.Type)
				e.Str(de.Name)
				if r.Plus {
					e.U64(de.Node)
					putAttr(&e, &de.Attr)
				}
			}
		case fData:
			if len(r.Data) > MaxData {
				return nil, nil, fmt.Errorf("qtfs: data of %d bytes exceeds %d", len(r.Data), MaxData)
			}
			e.U32(uint32(len(r.Data)))
			data = r.Data
		case fHelloReply:
			h := &r.Hello
			e.U32(h.Version)
			e.U64(h.Features)
			e.U64(h.Generation)
			e.U64(h.Root.Node)
			putAttr(&e, &h.Root.Attr)
			if h.ReadOnly {
				e.U8(1)
			} else {
				e.U8(0)
			}
		}
	}
	return e.B, data, nil
}

// DecodeReply parses a reply body for op. Data aliases b.
func DecodeReply(op Op, b []byte, r *Reply) error {
	if !op.Valid() {
		return fmt.Errorf("qtfs: decode: unknown opcode %d", op)
	}
	*r = Reply{}
	d := Dec{B: b}
	r.Errno = d.U32()
	if d.Err == nil && r.Errno != 0 {
		if r.Errno > 4095 {
			return fmt.Errorf("decode %s reply: errno %d out of range", op, r.Errno)
		}
		if err := d.Done(); err != nil {
			return fmt.Errorf("decode %s reply: %w", op, err)
		}
		return nil
	}
	for _, f := range replyLayout[op] {
		switch f {
		case fEntry:
			r.Entry.Node = d.U64()
			getAttr(&d, &r.Entry.Attr)
		case fAttr:
			getAttr(&d, &r.Attr)
		case fParent:
			getAttr(&d, &r.Parent)
		case fFh:
			r.Fh = d.U64()
		case fN:
			r.N = d.U64()
		case fLock:
			getLock(&d, &r.Lock)
		case fStatfs:
			s := &r.Statfs
			s.Blocks, s.Bfree, s.Bavail, s.Files, s.Ffree = d.U64(), d.U64(), d.U64(), d.U64(), d.U64()
			s.Bsize, s.NameLen, s.Frsize = d.U32(), d.U32(), d.U32()
		case fDirents:
			plus := d.U8()
			if d.Err == nil && plus > 1 {
				d.Err = fmt.Errorf("qtfs: bad readdirplus flag %d", plus)
			}
			r.Plus = plus == 1
			min := 22
			if r.Plus {
				min += 8 + AttrSize
			}
			n := d.Count(min)
			if d.Err == nil && n > 0 {
				r.Dirents = make([]Dirent, n)
				for i := range r.Dirents {
					de := &r.Dirents[i]
					de.Ino = d.U64()
					de.Off = d.U64()
					de.Type = d.U32()
					de.Name = d.Str(MaxName)
					if r.Plus {
						de.Node = d.U64()
						getAttr(&d, &de.Attr)
					}
				}
			}
		case fData:
			r.Data = d.Blob(MaxData)
		case fHelloReply:
			h := &r.Hello
			h.Version = d.U32()
			h.Features = d.U64()
			h.Generation = d.U64()
			h.Root.Node = d.U64()
			getAttr(&d, &h.Root.Attr)
			ro := d.U8()
			if d.Err == nil && ro > 1 {
				d.Err = fmt.Errorf("qtfs: bad read-only flag %d", ro)
			}
			h.ReadOnly = ro == 1
		}
	}
	if err := d.Done(); err != nil {
		return fmt.Errorf("decode %s reply: %w", op, err)
	}
	return nil
}
