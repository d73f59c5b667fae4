#!/usr/bin/env bash
# Prints the path of a Python virtualenv holding the pinned requirements of $1, made once per
# set of versions in the user cache under $2 (a folder name: linters, bench, ...). Concurrent
# callers wait for one another.
#
#   venv=$(hack/python-venv.sh hack/chart-lint/requirements.txt linters)
set -euo pipefail

requirements=$1
kind=$2
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator/$kind"
mkdir -p "$cache"
hash=$(sha256sum "$requirements" | cut -c1-12)
venv="$cache/py-$hash"
exec 9>"$cache/.venv.lock"
command -v flock >/dev/null 2>&1 && flock 9
if [ ! -e "$venv/.installed" ]; then
  echo "installing $(grep -v '^#' "$requirements" | tr '\n' ' ')into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2
  touch "$venv/.installed"
fi
echo "$venv"
