package main

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortControl sets SO_REUSEPORT on the listening socket before it is
// bound: every process of the same user that binds the same address with it
// shares the port, and the kernel spreads new connections across them (by a
// hash of the connection's addresses). A connection stays with the process
// that accepted it; when that process exits, its connections are closed and
// new ones go to the others.
func reusePortControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
	}
	return nil
}
