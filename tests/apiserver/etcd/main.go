// Command etcd is the upstream etcd server, built from its Go module so the end-to-end tests
// can run a real API server on it (see ../README.md).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
