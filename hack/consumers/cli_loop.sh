#!/usr/bin/env bash
# The AWS CLI as a workload uses it in a loop (`while true; do aws ...; sleep N; done`): a new
# `aws` process for every call, so every call reads the mounted files afresh. For
# tests/consumers.rs: calls `aws sts get-caller-identity` every CONSUMER_INTERVAL_MS and stops by
# itself after CONSUMER_DURATION_S; AWS_CLI names the CLI (default: `aws` on PATH).
# One line per call on stdout: `<unix ms> ok` or `<unix ms> error <exit status>`; nothing secret.
set -u
interval_ms=${CONSUMER_INTERVAL_MS:-6000}
end=$((SECONDS + ${CONSUMER_DURATION_S:-1500}))
aws=${AWS_CLI:-aws}
child=
trap '[ -n "$child" ] && kill "$child" 2>/dev/null; exit 0' TERM INT
echo "aws cli loop started" >&2
while [ "$SECONDS" -lt "$end" ]; do
  "$aws" sts get-caller-identity --output text --query Account >/dev/null &
  child=$!
  wait "$child"
  status=$?
  if [ "$status" -eq 0 ]; then
    echo "$(date +%s%3N) ok"
  else
    echo "$(date +%s%3N) error exit-$status"
  fi
  sleep "$((interval_ms / 1000)).$(printf '%03d' $((interval_ms % 1000)))" &
  child=$!
  wait "$child"
done
