#!/usr/bin/env bash
# Builds the upstream Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance, the
# release go.mod pins, the CRDs' release) as one test binary, `conformance.test`, and its
# backend `echo-basic` from the same module (and `echo-basic.images`, the image names the
# suite's manifests give it), once, into a cache directory keyed by go.mod,
# go.sum, the test file, this script and the Go version, and prints that directory. Later
# calls (and concurrent ones: they wait on a lock) reuse it. Only the Go module proxy is used.
#
#   conformance/build.sh              # prints e.g. ~/.cache/sniroute/conformance/3f2a…
#   SNIROUTE_CONFORMANCE_CACHE=/some/dir conformance/build.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' is not on PATH: install Go 1.26 or newer to build the Gateway API conformance suite" >&2
    exit 127
fi

export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"

key=$( { cat go.mod go.sum build.sh conformance_test.go; go env GOVERSION GOOS GOARCH; } | sha256sum | cut -c1-16)
root=${SNIROUTE_CONFORMANCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sniroute/conformance}
dir=$root/$key
mkdir -p "$root"

exec 9>"$root/$key.lock"
flock 9

if [[ ! -x $dir/conformance.test || ! -x $dir/echo-basic ]]; then
    version=$(go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api/conformance)
    tmp=$(mktemp -d "$root/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "build.sh: building the Gateway API conformance suite $version and echo-basic into $dir (minutes on a cold cache)" >&2
    start=$SECONDS
    go test -c -trimpath -ldflags "-s -w" -o "$tmp/conformance.test" .
    # Static: its image holds that one file.
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic
    # The image names the suite's manifests give echo-basic, for the tests to import it under.
    suite=$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)
    grep -rhoE 'registry\.k8s\.io/gateway-api/echo-basic:[^ "]+' "$suite/base" "$suite/tests" \
        | sort -u >"$tmp/echo-basic.images"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    echo "build.sh: built in $((SECONDS - start)) s" >&2
fi

echo "$dir"
