//go:build !linux

package main

import (
	"errors"
	"syscall"
)

// reusePortControl fails: --bind-reuse-port is implemented on Linux only.
func reusePortControl(_, _ string, _ syscall.RawConn) error {
	return errors.New("SO_REUSEPORT is supported on Linux only: remove --bind-reuse-port")
}
