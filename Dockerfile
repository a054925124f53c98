# syntax=docker/dockerfile:1
# sniroute container image: `docker build -t sniroute:TAG .` (or podman/buildah).
# Built from the repository root; .dockerignore keeps target/ and the fuzz corpus out.

# --- build: the release binary, with the toolchain CI tests with, against the same glibc
# as the runtime (Debian 12) ---
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is copied out of
# the cached target/ because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sniroute \
 && install -D -m 0755 target/release/sniroute /out/sniroute

# --- runtime: glibc, libgcc, CA roots and the binary; no shell, no package manager ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sniroute /usr/local/bin/sniroute
# Numeric, so Kubernetes can verify runAsNonRoot (65532 is distroless's "nonroot").
USER 65532:65532
# 8443: SNI listener; 6443: ClusterID listener; 9090: admin (/healthz, /readyz, /metrics).
EXPOSE 8443 6443 9090
ENTRYPOINT ["/usr/local/bin/sniroute"]
CMD ["--config", "/etc/sniroute/config.yaml"]
