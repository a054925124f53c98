// Command kube-proxy is the upstream kube-proxy (iptables mode here), built from its Go module
// so Service ClusterIPs are reachable from the host and from pods (see ../README.md).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
