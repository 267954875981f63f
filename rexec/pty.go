package rexec

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openPty opens a new pseudo-terminal pair. The master is opened through the
// os package so that it is registered with the runtime poller: reads can then
// be given deadlines when the process has exited but a descendant still holds
// the terminal open.
func openPty() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty master: %w", err)
	}
	// Fd() would switch the file to blocking mode; use the raw conn instead.
	raw, err := master.SyscallConn()
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("pty master: %w", err)
	}
	var n int
	var ierr error
	err = raw.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
			ierr = fmt.Errorf("unlock pty: %w", ierr)
			return
		}
		if n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN); ierr != nil {
			ierr = fmt.Errorf("pty number: %w", ierr)
		}
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("open pty slave: %w", err)
	}
	return master, slave, nil
}

// setWindowSize sets the terminal size of the pty whose master is f.
func setWindowSize(f *os.File, rows, cols uint32) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	ws := &unix.Winsize{Row: uint16(min(rows, 0xffff)), Col: uint16(min(cols, 0xffff))}
	var ierr error
	if err := raw.Control(func(fd uintptr) { ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); err != nil {
		return err
	}
	return ierr
}
