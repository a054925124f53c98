// Command kube-apiserver is the upstream kube-apiserver, built from its Go module so the
// end-to-end tests can run a real API server (see ../README.md).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
