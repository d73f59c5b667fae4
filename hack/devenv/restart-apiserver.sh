#!/usr/bin/env bash
# Restarts the running kube-apiserver of the dev environment with exactly the flags it runs with
# (read back from the process), and waits until it is ready again. etcd keeps the data, so to a
# client this is an apiserver restart as in a control-plane upgrade: connections drop, watches
# end, requests fail for a while. Used by the fault tests (tests/faults.rs).
#   hack/devenv/restart-apiserver.sh [DOWN_SECONDS]
# DOWN_SECONDS (default 0) keeps the apiserver stopped that long before starting it again.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

down_seconds=${1:-0}
state_file="$state_dir/state"
certs_dir="$state_dir/certs"
[ -f "$state_file" ] || die "no $state_file: is the environment up? (make env-up)"
# shellcheck source=/dev/null
. "$state_file"

pid=$(component_pid kube-apiserver) || die "kube-apiserver is not running (make env-up)"
# The command line, NUL-separated, as the process was started by up.sh.
mapfile -d '' args <"/proc/$pid/cmdline"
[ "${#args[@]}" -gt 1 ] || die "cannot read the command line of kube-apiserver ($pid)"

apiserver_ready() {
  [ "$(curl -sf --max-time 5 --cacert "$certs_dir/ca.crt" --cert "$certs_dir/admin.crt" \
        --key "$certs_dir/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz")" = ok ]
}

log "stopping kube-apiserver ($pid)"
stop_pids "$pid"
sleep "$down_seconds"
log "starting kube-apiserver again with the same flags"
# Keep the log of the run before the restart next to the new one.
mv "$log_dir/kube-apiserver.log" "$log_dir/kube-apiserver.before-restart.log" 2>/dev/null || true
start_component kube-apiserver "${args[@]}"
wait_for kube-apiserver 120 apiserver_ready
log "kube-apiserver is ready again"
