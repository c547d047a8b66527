// Command kvinject-agent is the fetcher agent that kvinject's webhook injects
// into opted-in pods: it reads the pod's mapped Key Vault secrets and writes
// them atomically into an in-memory volume, once (init), continuously
// (sidecar), or checks that they are there (probe). See package
// github.com/kvinject/kvinject/internal/agent for the modes, flags and
// environment.
//
//	kvinject-agent init|sidecar --dir=... --vault=... --identity=... --secret=<file>=<name>[@<version>] ...
//	kvinject-agent probe --dir=...
//	kvinject-agent doctor --vault=... --secret=... | --secrets=...   (see internal/doctor)
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/doctor"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	var code int
	if len(os.Args) > 1 && os.Args[1] == doctor.Command {
		code = doctor.Main(ctx, os.Args[2:], doctor.Options{})
	} else {
		code = agent.Main(ctx, os.Args[1:], agent.Options{})
	}
	stop()
	os.Exit(code)
}
