#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus and promtool), which the rule unit tests
# (test.sh beside this file) and the end-to-end test tests/e2e/monitoring.rs run. Idempotent, and
# never starts the package's service: the test runs its own Prometheus on a loopback
# ephemeral port, as a child process.
#
#   sudo bash deploy/components/monitoring/install-prometheus.sh
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "prometheus already installed: $(prometheus --version 2>&1 | head -n 1)"
  exit 0
fi
bash "$(dirname "$0")/../../tools/apt-install.sh" prometheus
echo "installed: $(prometheus --version 2>&1 | head -n 1)"
