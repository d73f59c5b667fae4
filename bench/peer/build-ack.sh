#!/usr/bin/env bash
# Builds the benchmark's peer, ACK's IAM controller, from the Go module proxy, once per version,
# into the user's cache directory. The wrapper module in bench/peer/ack-iam-controller pins the
# version and carries the module's own replace lines (v1.6.2 has none; v1.5.x had one for
# github.com/micahhausler/aws-iam-policy). Prints shell assignments for the benchmark:
#   ACK_IAM_CONTROLLER (the binary), ACK_IAM_CRDS (the module's CRDs), ACK_IAM_VERSION.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
wrapper="$here/ack-iam-controller"
command -v go >/dev/null 2>&1 || { echo "error: Go 1.24+ is needed to build the peer" >&2; exit 1; }
module=github.com/aws-controllers-k8s/iam-controller
version=$(awk -v m="$module" '$1 == "require" && $2 == m {print $3} $1 == m {print $2}' "$wrapper/go.mod" | head -n1)
[ -n "$version" ] || { echo "error: no version of $module in $wrapper/go.mod" >&2; exit 1; }
out="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator/peers/ack-iam-controller-$version"
mkdir -p "$out"
if ! [ -x "$out/ack-iam-controller" ]; then
  echo "building $module $version into $out; the first build takes about 6 minutes" >&2
  (cd "$wrapper" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' \
     -o "$out/ack-iam-controller.tmp" "$module/cmd/controller")
  mv "$out/ack-iam-controller.tmp" "$out/ack-iam-controller"
fi
module_dir=$(cd "$wrapper" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "$module")
[ -d "$module_dir/helm/crds" ] || { echo "error: $module_dir/helm/crds not found" >&2; exit 1; }
echo "ACK_IAM_CONTROLLER=$out/ack-iam-controller"
echo "ACK_IAM_CRDS=$module_dir/helm/crds"
echo "ACK_IAM_VERSION=$version"
