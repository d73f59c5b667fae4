#!/usr/bin/env bash
# Builds a pinned Go command from the Go module proxy (no other download) into the user's cache
# directory, once per version, and prints the path of the binary. Later runs only check the cache,
# so scripts and tests can call it every time:
#   umoci=$(hack/install-go-tool.sh umoci github.com/opencontainers/umoci v0.6.0 ./cmd/umoci)
# Arguments: the binary's name, its Go module, the module's version and the directory of its main
# package inside the module. GO_TOOL_LDFLAGS adds linker flags (for version stamps).
# The build runs inside the downloaded module, so its own go.mod applies, replace directives
# included (`go install pkg@version` refuses modules that have them).
set -euo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 <name> <module> <version> <main package directory in the module>" >&2
  exit 2
fi
name=$1 module=$2 version=$3 main=$4
need_go="1.24"
bin_dir="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator/bin"
tool="$bin_dir/$name-$version"

if [ -x "$tool" ]; then
  echo "$tool"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go $need_go or newer is needed to build $name (https://go.dev/dl or your package manager)" >&2
  exit 1
fi

mkdir -p "$bin_dir"
# One build at a time: callers may ask concurrently; the second one waits and reuses.
exec 9>"$bin_dir/.$name-$version.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [ -x "$tool" ]; then
  echo "$tool"
  exit 0
fi

staging=$(mktemp -d "$bin_dir/.$name-build.XXXXXX")
trap 'rm -rf "$staging"' EXIT
# Downloaded from outside any Go module, so that no go.mod around the caller's directory is
# consulted or changed.
cd "$staging"
echo "building $name $version from the Go module proxy into $bin_dir" >&2
dir=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$dir" ]; then
  echo "error: the Go module proxy did not give $module@$version" >&2
  exit 1
fi
(cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w ${GO_TOOL_LDFLAGS:-}" -o "$staging/$name" "$main")
mv "$staging/$name" "$tool"
echo "$tool"
