#!/usr/bin/env bash
# Builds the operator image without a container engine: a static (musl) binary assembled into an
# OCI image layout with umoci (built from the Go module proxy). The image holds what the
# Dockerfile's distroless/static base holds for this binary: the binary, a CA bundle, passwd and
# group entries for the non-root user 65532, /tmp and the user's home. Config: user 65532:65532,
# entrypoint the binary, port 8080, the OCI labels of the Dockerfile.
#
#   hack/image/build.sh                  # release build into target/image/oci, tag = crate version
#   IMAGE_PROFILE=dev hack/image/build.sh
#
# Push the layout with any OCI tool, e.g. `skopeo copy oci:target/image/oci:0.1.0 docker://...`
# or `crane push target/image/oci ...`. Environment:
#   IMAGE_PROFILE    cargo profile of the binary (release; `make test` uses dev to stay fast)
#   IMAGE_LAYOUT     where the layout is written (target/image/oci); replaced on each run
#   SOURCE_URL       org.opencontainers.image.source label (empty)
#   SOURCE_DATE_EPOCH  creation time and file times of the image (the last commit's time), so that
#                    the same binary gives the same image digest
# Only linux/amd64 is built here; see docs/image.md for other architectures.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=${IMAGE_PROFILE:-release}
layout=${IMAGE_LAYOUT:-target/image/oci}
target=x86_64-unknown-linux-musl
umoci_version=v0.6.0
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
ca_bundle=/etc/ssl/certs/ca-certificates.crt

die() { echo "image: $*" >&2; exit 1; }

# The toolchain for the static binary: Rust's musl target, and musl-gcc for the C that aws-lc-sys
# (TLS of the Kubernetes and AWS clients) compiles.
if ! rustc --print target-libdir --target "$target" >/dev/null 2>&1 \
  || [ ! -d "$(rustc --print target-libdir --target "$target")" ] \
  || [ -z "$(ls -A "$(rustc --print target-libdir --target "$target")")" ]; then
  command -v rustup >/dev/null || die "the Rust target $target is missing and rustup is not installed to add it"
  rustup target add "$target" >&2
fi
if ! command -v musl-gcc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "image: installing musl-tools (musl-gcc) with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >&2
  else
    die "musl-gcc is needed for the static binary: install musl-tools (Debian/Ubuntu) or musl (others)"
  fi
fi
[ -s "$ca_bundle" ] || die "no CA bundle at $ca_bundle: install ca-certificates"
umoci=$(hack/install-go-tool.sh umoci github.com/opencontainers/umoci "$umoci_version" ./cmd/umoci)

# Its own target directory: the musl build shares no artifacts with the host's, and a separate
# directory keeps it from holding the lock of the host builds.
echo "image: building the $profile binary for $target" >&2
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --locked --profile "$profile" \
  --bin cross-account-operator --target "$target" --target-dir target/image-cargo >&2
out_dir=$profile
[ "$profile" = dev ] && out_dir=debug
binary=target/image-cargo/$target/$out_dir/cross-account-operator

work=$(mktemp -d target/image-work.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/bundle/rootfs
rm -rf "$layout"
mkdir -p "$(dirname "$layout")"
"$umoci" init --layout "$layout"
"$umoci" new --image "$layout:$version"
"$umoci" unpack --image "$layout:$version" "$work/bundle" >/dev/null

install -D -m 0755 "$binary" "$rootfs/usr/local/bin/cross-account-operator"
install -D -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 -o 65532 -g 65532 "$rootfs/home/nonroot"
chown -R 0:0 "$rootfs/usr" "$rootfs/etc"
find "$rootfs" -exec touch -h -d "@$epoch" {} +

created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
"$umoci" repack --image "$layout:$version" --history.created "$created" \
  --history.created_by "hack/image/build.sh" "$work/bundle"
"$umoci" config --image "$layout:$version" --created "$created" \
  --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/cross-account-operator \
  --config.workingdir / \
  --config.env PATH=/usr/local/bin \
  --config.exposedports 8080/tcp \
  --config.label org.opencontainers.image.title=cross-account-operator \
  --config.label "org.opencontainers.image.description=Kubernetes operator that manages cross-account AWS IAM roles and keeps temporary STS credentials in Secrets" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.source=${SOURCE_URL:-}" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --no-history
"$umoci" gc --layout "$layout"
echo "image: $layout:$version" >&2
echo "$layout:$version"
