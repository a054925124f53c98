// Command kubelet is the upstream kubelet, built from its Go module so the end-to-end tests
// can run pods on a real node (see ../README.md).
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	// NewKubeletCommand takes the context its runtime lives in; upstream's main passes
	// context.Background() too (a nil one panics when the kubelet starts).
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
