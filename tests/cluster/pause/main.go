// Command pause is the pod sandbox's process (what registry.k8s.io/pause is): it holds the
// pod's namespaces and does nothing until it is told to stop. Static, so its image is this
// file alone.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
