# syntax=docker/dockerfile:1
# The operator image: a static (musl) binary on distroless/static, running as the non-root user
# 65532. Build from the repository root:
#   docker build -t cross-account-operator:0.1.0 --build-arg SOURCE_URL=https://example.com/repo .
# Needs BuildKit (the default builder of current Docker) for the cache mounts. Several
# architectures (the builder compiles for the platform it runs on, natively or under emulation):
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .
# Without a container engine, hack/image/build.sh (`make image`) assembles the same image as an
# OCI layout; docs/image.md compares the two.
#
# Both bases are pinned by the digest of their multi-platform index, the tag kept for readers.
# Digests as published in 2026 (rust:1.95-bookworm, distroless static-debian12:nonroot of
# 2026-08-26); update both together with `crane digest <image>:<tag>` (or Renovate/Dependabot).

FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS builder
# aws-lc-rs (TLS for the Kubernetes and AWS clients) compiles C for the musl target: musl-gcc from
# musl-tools, with cmake and clang for its build script where it needs them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/*
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=musl-gcc \
    CARGO_TERM_COLOR=never
WORKDIR /src
# Only what the build reads (see .dockerignore): the manifest, the lock file and the sources.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# --locked: exactly the dependency versions of Cargo.lock, or fail.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && rustup target add "$target" \
 && cargo build --release --locked --bin cross-account-operator --target "$target" \
 && install -D -m 0755 "target/$target/release/cross-account-operator" /out/cross-account-operator

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
ARG VERSION=0.1.0
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="cross-account-operator" \
      org.opencontainers.image.description="Kubernetes operator that manages cross-account AWS IAM roles and keeps temporary STS credentials in Secrets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/cross-account-operator /usr/local/bin/cross-account-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cross-account-operator"]
