#!/usr/bin/env bash
# make demo-repeat (DEMO_RUNS=10): runs `make demo` DEMO_RUNS times, each on a fresh local
# environment, and counts the Warning events of each run's happy path. Succeeds only when every
# run succeeded with no Warning event. Stops the environment at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${DEMO_RUNS:-10}
logs=target/demo-repeat
rm -rf "$logs"
mkdir -p "$logs"
failed=0
for i in $(seq 1 "$runs"); do
  hack/devenv/down.sh >/dev/null
  started=$SECONDS
  if hack/demo.sh >"$logs/run-$i.log" 2>&1; then
    outcome=passed
  else
    outcome=failed
    failed=$((failed + 1))
  fi
  warnings=0
  if [ -f target/devenv/env ]; then
    # shellcheck disable=SC1091
    set -a; . target/devenv/env; set +a
    kubectl get events -A --field-selector type=Warning \
      -o custom-columns=NAMESPACE:.metadata.namespace,OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message \
      --no-headers >"$logs/run-$i.warnings" 2>&1 || true
    # kubectl's events.k8s.io events are listed by core/v1 too; count the lines, not headers.
    warnings=$(grep -c . "$logs/run-$i.warnings" || true)
  fi
  if [ "$warnings" -gt 0 ]; then
    failed=$((failed + 1))
    outcome="$outcome with $warnings Warning event(s)"
    sed 's/^/    /' "$logs/run-$i.warnings"
  fi
  echo "run $i of $runs: $outcome in $((SECONDS - started)) s (log: $logs/run-$i.log)"
done
hack/devenv/down.sh >/dev/null
if [ "$failed" -gt 0 ]; then
  echo "$failed of $runs runs failed or showed Warning events" >&2
  exit 1
fi
echo "all $runs runs passed without a Warning event"
