#!/usr/bin/env bash
# Builds kube-apiserver and etcd from this Go module once, into a cache directory keyed by
# go.mod, go.sum, the two mains and the Go version, and prints that directory. Later calls
# (and concurrent ones: they wait on a lock) reuse it. Only the Go module proxy is used.
#
#   tests/apiserver/build.sh            # prints e.g. ~/.cache/sniroute/apiserver/3f2a…
#   SNIROUTE_APISERVER_CACHE=/some/dir tests/apiserver/build.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' is not on PATH: install Go 1.26 or newer to build kube-apiserver and etcd" >&2
    exit 127
fi

export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"

key=$( { cat go.mod go.sum kube-apiserver/main.go etcd/main.go build.sh; go env GOVERSION GOOS GOARCH; } \
    | sha256sum | cut -c1-16)
root=${SNIROUTE_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sniroute/apiserver}
dir=$root/$key
mkdir -p "$root"

exec 9>"$root/$key.lock"
flock 9

if [[ ! -x $dir/kube-apiserver || ! -x $dir/etcd ]]; then
    kube=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
    minor=${kube#v1.}
    minor=${minor%%.*}
    tmp=$(mktemp -d "$root/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "build.sh: building kube-apiserver $kube and etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) into $dir (minutes on a cold cache)" >&2
    start=$SECONDS
    # The version the server reports (and clients check) is stamped as upstream's release does.
    pkg=k8s.io/component-base/version
    go build -trimpath -o "$tmp/kube-apiserver" \
        -ldflags "-s -w -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
        ./kube-apiserver
    go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" ./etcd
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    echo "build.sh: built in $((SECONDS - start)) s" >&2
fi

echo "$dir"
