package transport

import (
	"errors"
	"fmt"
	"io"
)

// The preface is the first thing a client writes on every connection (after
// the TLS handshake, where there is one): the magic "OFLD", a version byte,
// a length byte and the channel name. It is read byte-exact, so the conn can
// be handed on unwrapped.
const (
	prefaceMagic   = "OFLD"
	prefaceVersion = 1
	maxChannelName = 32
)

// Channel names used by the project's services.
const (
	ChannelRuntime = "runtime"
	ChannelStdio   = "stdio"
	ChannelQtfs    = "qtfs"
	ChannelRexec   = "rexec"
	ChannelUnpack  = "unpack"
)

// ErrBadPreface is returned for a connection that did not open with a valid
// channel preface.
var ErrBadPreface = errors.New("bad channel preface")

func validChannel(name string) error {
	if name == "" || len(name) > maxChannelName {
		return fmt.Errorf("%w: channel name length %d not in 1..%d", ErrBadPreface, len(name), maxChannelName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("%w: channel name %q has character %q", ErrBadPreface, name, c)
		}
	}
	return nil
}

// AppendPreface appends the preface for channel to b.
func AppendPreface(b []byte, channel string) ([]byte, error) {
	if err := validChannel(channel); err != nil {
		return nil, err
	}
	b = append(b, prefaceMagic...)
	b = append(b, prefaceVersion, byte(len(channel)))
	return append(b, channel...), nil
}

// ReadPreface reads a preface from r and returns the channel name. It reads
// exactly the preface's bytes and nothing more.
func ReadPreface(r io.Reader) (string, error) {
	var hdr [6]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadPreface, err)
	}
	if string(hdr[:4]) != prefaceMagic {
		return "", fmt.Errorf("%w: magic %q", ErrBadPreface, hdr[:4])
	}
	if hdr[4] != prefaceVersion {
		return "", fmt.Errorf("%w: version %d, want %d", ErrBadPreface, hdr[4], prefaceVersion)
	}
	n := int(hdr[5])
	if n == 0 || n > maxChannelName {
		return "", fmt.Errorf("%w: channel name length %d not in 1..%d", ErrBadPreface, n, maxChannelName)
	}
	name := make([]byte, n)
	if _, err := io.ReadFull(r, name); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadPreface, err)
	}
	if err := validChannel(string(name)); err != nil {
		return "", err
	}
	return string(name), nil
}
