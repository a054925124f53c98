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

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
# Keep the packages' own services from starting (no init here, or one we should not touch).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
echo "compare deps: installed ${need[*]}"
haproxy -v | head -1
nginx -v 2>&1
