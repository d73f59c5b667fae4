#!/usr/bin/env bash
# Installs a pinned helm binary, built from the Go module proxy (no other download), into the
# user's cache directory, once per version. Prints the path of the binary. Later runs only check
# the cache, so tests and scripts can call it every time:
#   helm=$(hack/install-helm.sh)
# HELM_VERSION overrides the pinned version (a v3 tag the Go module proxy has).
set -euo pipefail

version=${HELM_VERSION:-v3.21.4}
bin_dir="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator/bin"
helm="$bin_dir/helm-$version"

if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi

# helm's release builds stamp its version and the Kubernetes version of its client-go (the default
# for .Capabilities.KubeVersion in `helm template` and `helm lint`); without them helm assumes
# Kubernetes 1.20. Do the same, reading client-go's version from helm's go.mod.
if ! command -v go >/dev/null 2>&1; then
  echo "error: Go 1.24 or newer is needed to build helm (https://go.dev/dl or your package manager)" >&2
  exit 1
fi
gomod=$(cd / && go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")
case $client_go in
  v0.*.*) ;;
  *) echo "error: cannot read k8s.io/client-go's version from $gomod (got '$client_go')" >&2; exit 1 ;;
esac
k8s_minor=$(echo "$client_go" | cut -d. -f2)
ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

GO_TOOL_LDFLAGS="$ldflags" exec "$(dirname "$0")/install-go-tool.sh" helm helm.sh/helm/v3 "$version" ./cmd/helm
