#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager from the Go module proxy, once per
# version, into the user's cache directory. Prints the directory that holds the binaries. Later
# runs only check the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need_go="1.24"
if ! command -v go >/dev/null 2>&1; then
  echo "error: Go $need_go or newer is needed to build kube-apiserver and etcd (https://go.dev/dl or your package manager)" >&2
  exit 1
fi
kube_dir="$here/controlplane/kube-apiserver"   # the wrapper module of both Kubernetes binaries
etcd_dir="$here/controlplane/etcd"
kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$kube_dir/go.mod")
etcd_version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$etcd_dir/go.mod")
# Bump `recipe` whenever the set of binaries or the way they are built changes, so that a cache
# built the old way is not reused. 2: kube-controller-manager, and version ldflags.
recipe=2
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator/controlplane"
out="$cache_root/kube-$kube_version-etcd-$etcd_version-r$recipe"
mkdir -p "$out"

# What `kubectl version` and /version report. A module zip carries no VCS data, so the values are
# the ones Kubernetes' release build would stamp (hack/lib/version.sh), taken from the module:
# the version from go.mod, the build date fixed to the module's release time (reproducible
# builds), and a commit of all zeros, as no commit is known.
kube_ldflags() {
  local major minor build_date pkg flags="-s -w"
  IFS=. read -r major minor _ <<<"${kube_version#v}"
  build_date=$(cd "$kube_dir" &&
    GOFLAGS=-mod=mod go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
  : "${build_date:=1970-01-01T00:00:00Z}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=$build_date"
  done
  echo "$flags"
}

build() { # name package module-dir ldflags
  local name=$1 pkg=$2 dir=$3 ldflags=$4 started=$SECONDS
  if [ -x "$out/$name" ]; then return 0; fi
  echo "building $name ($pkg) into $out; the first build takes several minutes" >&2
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags="$ldflags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "built $name in $((SECONDS - started))s" >&2
}
build etcd go.etcd.io/etcd/server/v3 "$etcd_dir" "-s -w"
kube_flags=$(kube_ldflags)
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_dir" "$kube_flags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$kube_dir" "$kube_flags"
echo "$out"
