// Command kube-controller-manager is the upstream controller manager (Deployments,
// ReplicaSets, EndpointSlices, ServiceAccount tokens), built from its Go module (see ../README.md).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
