#!/usr/bin/env bash
# Installs what `cargo bench --bench compare` runs side by side with sniroute: HAProxy and
# nginx with its stream module (ssl_preread) from Debian. Idempotent: installs only what is
# missing, and never starts the distribution's services (the harness runs its own instances
# on loopback ephemeral ports, as child processes).
#
#   sudo bash benches/install-compare-deps.sh
set -euo pipefail

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
# The stream module is a separate package on Debian; its .so is what `load_module` needs.
if ! ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; then
  need+=(libnginx-mod-stream)
fi

if [ ${#need[@]} -eq 0 ]; then
  echo "compare deps: haproxy, nginx and libnginx-mod-stream already installed"
  exit 0
fi

bash "$(dirname "$0")/../deploy/tools/apt-install.sh" "${need[@]}"
echo "compare deps: installed ${need[*]}"
haproxy -v | head -1
nginx -v 2>&1
