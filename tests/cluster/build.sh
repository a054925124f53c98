#!/usr/bin/env bash
# Builds the node's Kubernetes components (kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy; k8s.io/kubernetes at the same release and pins as ../apiserver), the pod
# sandbox's pause binary and the tests' kube-apiserver stand-in from this Go module once, into a cache directory keyed by go.mod,
# go.sum, the mains, this script and the Go version, and prints that directory. Later calls
# (and concurrent ones: they wait on a lock) reuse it. Only the Go module proxy is used.
#
#   tests/cluster/build.sh              # prints e.g. ~/.cache/sniroute/cluster/3f2a…
#   SNIROUTE_CLUSTER_CACHE=/some/dir tests/cluster/build.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' is not on PATH: install Go 1.26 or newer to build the kubelet and the other node components" >&2
    exit 127
fi

export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"

mains=(kubelet kube-controller-manager kube-scheduler kube-proxy pause kas-standin)
key=$( { cat go.mod go.sum build.sh; for m in "${mains[@]}"; do cat "$m/main.go"; done; go env GOVERSION GOOS GOARCH; } \
    | sha256sum | cut -c1-16)
root=${SNIROUTE_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sniroute/cluster}
dir=$root/$key
mkdir -p "$root"

exec 9>"$root/$key.lock"
flock 9

missing=0
for m in "${mains[@]}"; do
    [[ -x $dir/$m ]] || missing=1
done
if ((missing)); then
    kube=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
    minor=${kube#v1.}
    minor=${minor%%.*}
    tmp=$(mktemp -d "$root/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "build.sh: building kubelet, kube-controller-manager, kube-scheduler and kube-proxy $kube into $dir (minutes on a cold cache)" >&2
    start=$SECONDS
    # The version each component reports (the kubelet's node status, the skew checks) is
    # stamped as upstream's release does. One `go build` of all four shares their packages.
    pkg=k8s.io/component-base/version
    go build -trimpath -o "$tmp/" \
        -ldflags "-s -w -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
        ./kubelet ./kube-controller-manager ./kube-scheduler ./kube-proxy
    # Static: each of their images holds that one file.
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/" ./pause ./kas-standin
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    echo "build.sh: built in $((SECONDS - start)) s" >&2
fi

echo "$dir"
