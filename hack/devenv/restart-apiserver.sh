#!/usr/bin/env bash
# Restarts the running kube-apiserver of the dev environment with exactly the flags it runs with
# (read back from the process), and waits until it is ready again. etcd keeps the data, so to a
# client this is an apiserver restart as in a control-plane upgrade: connections drop, watches
# end, requests fail for a while. Used by the fault tests (tests/faults.rs).
# kube-controller-manager is restarted after it, as an upgrade restarts it too: its informers
# saw the apiserver refuse them ("forbidden" before its RBAC was loaded) and, in client-go's
# backoff, took more than a minute to resume, so the tests that ran next found no aggregation
# of ClusterRoles and no garbage collection for that long.
#   hack/devenv/restart-apiserver.sh [DOWN_SECONDS]
# DOWN_SECONDS (default 0) keeps the apiserver stopped that long before starting it again.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

down_seconds=${1:-0}
state_file="$state_dir/state"
[ -f "$state_file" ] || die "no $state_file: is the environment up? (make env-up)"
# shellcheck source=/dev/null
. "$state_file"

# restart NAME READY DOWN_SECONDS: stops component NAME, waits DOWN_SECONDS, starts it again with
# the command line it ran with (read back, NUL-separated, as up.sh started it) and waits for READY.
restart() {
  local name=$1 ready=$2 down=$3 pid args
  pid=$(component_pid "$name") || die "$name is not running (make env-up)"
  mapfile -d '' args <"/proc/$pid/cmdline"
  [ "${#args[@]}" -gt 1 ] || die "cannot read the command line of $name ($pid)"
  log "stopping $name ($pid)"
  stop_pids "$pid"
  sleep "$down"
  log "starting $name again with the same flags"
  # Keep the log of the run before the restart next to the new one.
  mv "$log_dir/$name.log" "$log_dir/$name.before-restart.log" 2>/dev/null || true
  start_component "$name" "${args[@]}"
  wait_for "$name" 120 "$ready"
  log "$name is ready again"
}

restart kube-apiserver apiserver_ready "$down_seconds"
restart kube-controller-manager kcm_ready 0
