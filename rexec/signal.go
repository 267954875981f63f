package rexec

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// signals are the signals a client may forward, by wire name. Names rather
// than numbers keep the protocol independent of the two sides' architectures.
// WINCH is not here: in tty mode a Resize makes the kernel send it.
var signals = map[string]unix.Signal{
	"INT":  unix.SIGINT,
	"TERM": unix.SIGTERM,
	"HUP":  unix.SIGHUP,
	"QUIT": unix.SIGQUIT,
	"USR1": unix.SIGUSR1,
	"USR2": unix.SIGUSR2,
	"KILL": unix.SIGKILL,
}

// ForwardedSignals are the signals the rexec client catches and forwards.
var ForwardedSignals = []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2}

// SignalName returns the wire name of s, or an error for a signal rexec does
// not forward.
func SignalName(s os.Signal) (string, error) {
	for name, sig := range signals {
		if sig == s {
			return name, nil
		}
	}
	return "", fmt.Errorf("rexec: signal %v is not forwarded", s)
}

func parseSignal(name string) (unix.Signal, error) {
	s, ok := signals[name]
	if !ok {
		return 0, fmt.Errorf("rexec: signal %q is not allowed", name)
	}
	return s, nil
}
