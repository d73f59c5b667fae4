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

pid=$(component_pid kube-apiserver) || die "kube-apiserver is not running (make env-up)"
# The command line, NUL-separated, as the process was started by up.sh.
mapfile -d '' args <"/proc/$pid/cmdline"
[ "${#args[@]}" -gt 1 ] || die "cannot read the command line of kube-apiserver ($pid)"

log "stopping kube-apiserver ($pid)"
stop_pids "$pid"
sleep "$down_seconds"
log "starting kube-apiserver again with the same flags"
# Keep the log of the run before the restart next to the new one.
mv "$log_dir/kube-apiserver.log" "$log_dir/kube-apiserver.before-restart.log" 2>/dev/null || true
start_component kube-apiserver "${args[@]}"
wait_for kube-apiserver 120 apiserver_ready
log "kube-apiserver is ready again"

kcm_pid=$(component_pid kube-controller-manager) || die "kube-controller-manager is not running (make env-up)"
mapfile -d '' kcm_args <"/proc/$kcm_pid/cmdline"
[ "${#kcm_args[@]}" -gt 1 ] || die "cannot read the command line of kube-controller-manager ($kcm_pid)"
log "restarting kube-controller-manager ($kcm_pid) with the same flags"
stop_pids "$kcm_pid"
mv "$log_dir/kube-controller-manager.log" "$log_dir/kube-controller-manager.before-restart.log" 2>/dev/null || true
start_component kube-controller-manager "${kcm_args[@]}"
wait_for kube-controller-manager 120 kcm_ready
log "kube-controller-manager is ready again"
