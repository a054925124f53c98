#!/usr/bin/env bash
# Writes an OCI image archive (one uncompressed layer) for `ctr images import`, from files
# on this machine, with no registry and no image builder:
#
#   image.sh OUT.tar NAME USER ENTRYPOINT_JSON CMD_JSON SRC=DEST...
#   image.sh pause.tar sniroute.test/pause:1 65535:65535 '["/pause"]' '[]' /path/to/pause=/pause
#
# NAME is the full reference the runtime stores (docker.io/library/sniroute:0.1.0 is what
# a pod's `image: sniroute:0.1.0` resolves to). A SRC that is a dynamically linked ELF
# brings the shared libraries it loads (as ldd finds them here) to the same paths.
set -euo pipefail

out=${1:?usage: image.sh OUT.tar NAME USER ENTRYPOINT_JSON CMD_JSON SRC=DEST...}
name=$2 user=$3 entrypoint=$4 cmd=$5
shift 5

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root" "$work/blobs/sha256"

put() { # SRC DEST
    mkdir -p "$root$(dirname "$2")"
    cp -L "$1" "$root$2"
}
for pair in "$@"; do
    src=${pair%%=*} dest=${pair#*=}
    put "$src" "$dest"
    # ldd fails on a static binary ("not a dynamic executable").
    if ldd "$src" >/dev/null 2>&1; then
        # `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader.
        while read -r lib; do
            put "$lib" "$lib"
        done < <(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
    fi
done
mkdir -p "$root/etc" "$root/tmp"
uid=${user%%:*}
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' "$uid" "$uid" >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$uid" >"$root/etc/group"

blob() { # FILE -> its digest, the file moved into blobs/
    local digest
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$work/blobs/sha256/$digest"
    echo "$digest"
}
size() { stat -c %s "$work/blobs/sha256/$1"; }

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer" .
layer=$(blob "$work/layer")

printf '{"architecture":"amd64","os":"linux","config":{"User":"%s","Entrypoint":%s,"Cmd":%s,"Env":["PATH=/usr/local/bin:/usr/bin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$user" "$entrypoint" "$cmd" "$layer" >"$work/config"
config=$(blob "$work/config")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$(size "$config")" "$layer" "$(size "$layer")" >"$work/manifest"
manifest=$(blob "$work/manifest")

printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$(size "$manifest")" "$name" "${name##*:}" >"$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"

tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out" oci-layout index.json blobs
