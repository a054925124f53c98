#!/usr/bin/env bash
# Builds the node's Kubernetes components (kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy; k8s.io/kubernetes at the same release and pins as ../apiserver), the pod
# sandbox's pause binary and the tests' kube-apiserver stand-in from this Go module once, into a cache directory keyed by go.mod,
# go.sum, the mains, this script and the Go version, and prints that directory. Later calls
# (and concurrent ones: they wait on a lock) reuse it. Only the Go module proxy is used.
#
# With `metrics-server`, builds metrics-server instead (the release metrics-server/go.mod's
# `tool` line pins, with that module's own pins: v0.8.0 is on k8s.io/* v0.33, not v0.36) and
# copies upstream's manifests from the same module beside it, in a cache of its own (keyed
# by that go.mod and go.sum), so neither build invalidates the other.
#
#   tests/cluster/build.sh              # prints e.g. ~/.cache/sniroute/cluster/3f2a…
#   tests/cluster/build.sh metrics-server   # prints e.g. ~/.cache/sniroute/cluster/metrics-server/9c1d…
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

# cache NAME FILE...: $dir is NAME's cache directory for the key of FILEs, this script and
# the Go version; held under a lock until this script exits.
cache() {
    local name=$1 key
    shift
    key=$( { cat "$@" "$here/build.sh"; go env GOVERSION GOOS GOARCH; } | sha256sum | cut -c1-16)
    root=${SNIROUTE_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sniroute/cluster}
    [[ $name == cluster ]] || root=$root/$name
    dir=$root/$key
    mkdir -p "$root"
    exec 9>"$root/$key.lock"
    flock 9
}
# built START: the new build in $tmp becomes $dir.
built() {
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    echo "build.sh: built in $((SECONDS - $1)) s" >&2
}

if [[ ${1:-} == metrics-server ]]; then
    cd metrics-server
    cache metrics-server go.mod go.sum
    if [[ ! -x $dir/metrics-server || ! -d $dir/manifests/base ]]; then
        pkg=sigs.k8s.io/metrics-server
        version=$(go list -m -f '{{.Version}}' "$pkg")
        tmp=$(mktemp -d "$root/.build.XXXXXX")
        trap 'rm -rf "$tmp"' EXIT
        echo "build.sh: building metrics-server $version into $dir (minutes on a cold cache)" >&2
        start=$SECONDS
        # Static, version stamped, as upstream's Makefile builds it for its image.
        CGO_ENABLED=0 go build -trimpath -o "$tmp/metrics-server" \
            -ldflags "-s -w -X k8s.io/client-go/pkg/version.gitVersion=$version" "$pkg/cmd/metrics-server"
        cp -r "$(go list -m -f '{{.Dir}}' "$pkg")/manifests" "$tmp/manifests"
        chmod -R u+w "$tmp/manifests"
        built "$start"
    fi
    echo "$dir"
    exit 0
fi

mains=(kubelet kube-controller-manager kube-scheduler kube-proxy pause kas-standin)
cache cluster go.mod go.sum "${mains[@]/%//main.go}"

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
    built "$start"
fi

echo "$dir"
