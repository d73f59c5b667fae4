#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go module proxy, once per version, into the user's cache
# directory. Prints the directory that holds both binaries. Later runs only check the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need_go="1.24"
if ! command -v go >/dev/null 2>&1; then
  echo "error: Go $need_go or newer is needed to build kube-apiserver and etcd (https://go.dev/dl or your package manager)" >&2
  exit 1
fi
kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/controlplane/kube-apiserver/go.mod")
etcd_version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$here/controlplane/etcd/go.mod")
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator/controlplane"
out="$cache_root/kube-$kube_version-etcd-$etcd_version"
mkdir -p "$out"

build() { # name package module-dir
  local name=$1 pkg=$2 dir=$3
  if [ -x "$out/$name" ]; then return 0; fi
  echo "building $name ($pkg) into $out; the first build takes several minutes" >&2
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
}
build etcd go.etcd.io/etcd/server/v3 "$here/controlplane/etcd"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$here/controlplane/kube-apiserver"
echo "$out"
