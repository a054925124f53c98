#!/usr/bin/env bash
# Checks the alert and recording rules of prometheusrule.yaml with Debian's promtool:
# `promtool check rules` on the rule groups (and on those of every rendered PrometheusRule
# given, e.g. an overlay's patched thresholds), then `promtool test rules` on
# rules.test.yaml. CI runs it; exits non-zero on any failure.
#
#   bash deploy/components/monitoring/test.sh [RENDERED.yaml...]
#
# Needs promtool (install-prometheus.sh beside this file) and python3 with PyYAML.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v promtool >/dev/null; then
  echo "test.sh: no promtool: install Debian's prometheus package" \
    "(bash $here/install-prometheus.sh)" >&2
  exit 1
fi
python=${PYTHON:-python3}
if ! "$python" -c 'import yaml' 2>/dev/null; then
  echo "test.sh: $python has no PyYAML (Debian: python3-yaml)" >&2
  exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Writes the rule groups (spec) of every PrometheusRule in $1 to $2, one file each.
extract() {
  "$python" - "$1" "$2" <<'PY'
import sys, yaml
source, prefix = sys.argv[1], sys.argv[2]
rules = [o for o in yaml.safe_load_all(open(source)) if o and o.get("kind") == "PrometheusRule"]
if not rules:
    sys.exit(f"{source}: no PrometheusRule")
for i, obj in enumerate(rules):
    with open(f"{prefix}{i}.yaml", "w") as f:
        yaml.safe_dump(obj["spec"], f, sort_keys=False)
    print(f"{prefix}{i}.yaml")
PY
}

echo "promtool:   $(promtool --version 2>&1 | head -n 1)"
extract "$here/prometheusrule.yaml" "$out/component-" >/dev/null
cp "$out/component-0.yaml" "$out/rules.yaml"
promtool check rules "$out/rules.yaml"
n=0
for rendered in "$@"; do
  n=$((n + 1))
  for file in $(extract "$rendered" "$out/rendered-$n-"); do
    echo "($rendered)"
    promtool check rules "$file"
  done
done
cp "$here/rules.test.yaml" "$out/"
promtool test rules "$out/rules.test.yaml"
echo "monitoring rules: ok"
