// Command pause is the pod sandbox ("infra") container of the real-kubelet
// tests (test/e2e). No registry is reachable there, so the image that
// containerd runs for every pod sandbox is built locally from this program: it
// does what registry.k8s.io/pause does for a pod without a shared process
// namespace, which is to hold the pod's namespaces open, sleeping until it is
// told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
