#!/usr/bin/env bash
# Runs the Gateway API conformance suite (built by build.sh) against the cluster KUBECONFIG
# names, where sniroute serves the GatewayClass `sniroute`, with the GATEWAY-TLS profile, and
# writes the suite's report to REPORT. tests/conformance.rs sets the cluster up and runs this;
# the committed report.yaml was made by it (README.md has the command).
#
#   conformance/run.sh KUBECONFIG REPORT [MORE SUITE FLAGS...]
set -euo pipefail

kubeconfig=${1:?usage: run.sh KUBECONFIG REPORT [MORE SUITE FLAGS...]}
report=${2:?usage: run.sh KUBECONFIG REPORT [MORE SUITE FLAGS...]}
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$("$here/build.sh")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)

# Core features of the profile only: sniroute serves TLS Passthrough and nothing of the
# extended features (ports other than 443 on one address, static addresses, infrastructure
# propagation, TLS Terminate and mixed mode).
KUBECONFIG=$kubeconfig exec "$bin/conformance.test" \
    -test.v -test.run '^TestConformance$' -test.timeout 60m \
    --gateway-class=sniroute \
    --conformance-profiles=GATEWAY-TLS \
    --supported-features=Gateway,ReferenceGrant,TLSRoute \
    --organization=sniroute --project=sniroute --url=https://sniroute.dev \
    --version="v$version" --contact=sniroute-maintainers \
    --report-output="$report" \
    "$@"
