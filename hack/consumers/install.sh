#!/usr/bin/env bash
# Installs the SDK consumers of tests/consumers.rs that the repository's own toolchains do not
# bring, once per version, into the user's cache directory (as hack/build-controlplane.sh does):
#   - the AWS SDK for Go v2 consumer (hack/consumers/go), built from the Go module proxy;
#   - the AWS SDK for JavaScript v3 consumer (hack/consumers/js), installed with `npm ci` from the
#     npm registry into a folder of its own (never globally).
# boto3 and the AWS CLI come with target/venv (hack/devenv/requirements.txt, installed by
# hack/devenv/up.sh); the Rust consumer is a cargo example (`cargo build --example sdk-consumer`).
#
# Writes target/consumers/env (shell `export` lines, loaded by `make integration`):
#   CONSUMER_GO_BIN           the Go consumer binary
#   CONSUMER_JS_DIR           the folder with consumer.mjs and its node_modules, or
#   CONSUMER_JS_UNAVAILABLE   why the JavaScript consumer could not be installed (no Node.js, or
#                             the npm registry cannot be reached); the test then skips that
#                             consumer only, saying so.
# A failure to build the Go consumer, or an npm install that fails while the registry answers,
# is an error.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
out_dir="$repo_root/target/consumers"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator/consumers"
# Bump when the way the consumers are built changes, so that an old build is not reused.
recipe=1
mkdir -p "$out_dir" "$cache_root"

log() { echo "[consumers] $*" >&2; }
die() { echo "[consumers] error: $*" >&2; exit 1; }
content_hash() { cat "$@" | sha256sum | cut -c1-12; }

# Go v2: keyed by the SDK modules' versions and the consumer's sources.
go_dir="$here/go"
command -v go >/dev/null 2>&1 || die "Go is needed to build the AWS SDK for Go v2 consumer"
sdk_version() { awk -v m="$1" '$1 == m {print $2}' "$go_dir/go.mod"; }
go_key="config-$(sdk_version github.com/aws/aws-sdk-go-v2/config)-sts-$(sdk_version github.com/aws/aws-sdk-go-v2/service/sts)"
go_key+="-$(content_hash "$go_dir/go.mod" "$go_dir/go.sum" "$go_dir/main.go")-r$recipe"
go_bin="$cache_root/go-v2-$go_key/consumer"
if [ ! -x "$go_bin" ]; then
  started=$SECONDS
  log "building the AWS SDK for Go v2 consumer ($go_key)"
  mkdir -p "$(dirname "$go_bin")"
  (cd "$go_dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$go_bin.tmp" .) ||
    die "go build of hack/consumers/go failed"
  mv "$go_bin.tmp" "$go_bin"
  log "built the Go v2 consumer in $((SECONDS - started))s"
fi

# JavaScript v3: keyed by the client's version and the lockfile and script.
js_src="$here/js"
js_line=
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  js_line="CONSUMER_JS_UNAVAILABLE=$(printf '%q' "Node.js and npm are not installed")"
else
  client_version=$(node -e 'console.log(require(process.argv[1]).dependencies["@aws-sdk/client-sts"])' "$js_src/package.json")
  js_dir="$cache_root/js-v3-client-sts-$client_version-$(content_hash "$js_src/package.json" "$js_src/package-lock.json" "$js_src/consumer.mjs")-r$recipe"
  if [ -f "$js_dir/.installed" ]; then
    js_line="CONSUMER_JS_DIR=$(printf '%q' "$js_dir")"
  else
    # Whether the registry answers, first: a registry that cannot be reached skips this consumer
    # (the test says so), quickly, while a failing install with a registry that answers is a bug.
    if ! ping_output=$(timeout 60 npm ping --fetch-retries=1 --fetch-timeout=20000 --loglevel=error 2>&1); then
      why=$(grep -m1 -E 'FetchError|reason|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|ECONNREFUSED' <<<"$ping_output" ||
        head -n1 <<<"$ping_output")
      reason="the npm registry cannot be reached (npm ping: ${why:-no answer within 60 s})"
      log "WARNING: the JavaScript v3 consumer is not installed: $reason; tests/consumers.rs skips it"
      js_line="CONSUMER_JS_UNAVAILABLE=$(printf '%q' "$reason")"
    else
      started=$SECONDS
      log "installing the AWS SDK for JavaScript v3 consumer (@aws-sdk/client-sts $client_version) with npm ci"
      rm -rf "$js_dir.tmp"
      mkdir -p "$js_dir.tmp"
      cp "$js_src/package.json" "$js_src/package-lock.json" "$js_src/consumer.mjs" "$js_dir.tmp/"
      (cd "$js_dir.tmp" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >"$out_dir/npm.log" 2>&1 || {
        tail -n 20 "$out_dir/npm.log" >&2
        die "npm ci of hack/consumers/js failed although the npm registry answers (log: target/consumers/npm.log)"
      }
      touch "$js_dir.tmp/.installed"
      rm -rf "$js_dir"
      mv "$js_dir.tmp" "$js_dir"
      js_line="CONSUMER_JS_DIR=$(printf '%q' "$js_dir")"
      log "installed the JavaScript v3 consumer in $((SECONDS - started))s"
    fi
  fi
fi

{
  echo "# Written by hack/consumers/install.sh; load with: set -a; . target/consumers/env"
  echo "export CONSUMER_GO_BIN=$(printf '%q' "$go_bin")"
  echo "export $js_line"
} >"$out_dir/env.tmp"
mv "$out_dir/env.tmp" "$out_dir/env"
