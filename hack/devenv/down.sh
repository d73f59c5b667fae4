#!/usr/bin/env bash
# Stops the local dev environment started by up.sh (kube-controller-manager, kube-apiserver, etcd,
# moto) and removes its state: pids, etcd data, certs, kubeconfigs, seed values, env file. Keeps target/venv, the
# control-plane binary cache and the logs (for post-mortems; the next up.sh clears them).
# Succeeds when nothing is running.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

stopped=() first=() last=()
# The operator, when `make demo` started one, goes first with the apiserver.
for name in "${devenv_components[@]}" operator; do
  if pid=$(component_pid "$name"); then
    if [ "$name" = etcd ]; then last+=("$pid"); else first+=("$pid"); fi
    stopped+=("$name")
  fi
done

# Safety net for a lost pid file: an etcd, kube-apiserver or kube-controller-manager using this
# checkout's state dir, or a moto_server from this checkout's venv, is ours (absolute paths, so
# other checkouts are left alone).
while read -r pid cmd args; do
  case "${cmd##*/} $args" in
    "etcd "*"$state_dir/"*) group=last ;;
    "kube-apiserver "*"$state_dir/"* | "kube-controller-manager "*"$state_dir/"* | \
      *" $venv_dir/bin/moto_server"*) group=first ;;
    *) continue ;;
  esac
  case " ${first[*]:-} ${last[*]:-} " in *" $pid "*) continue ;; esac
  pid_running "$pid" || continue
  log "found leftover process $pid (${cmd##*/})"
  if [ "$group" = last ]; then last+=("$pid"); else first+=("$pid"); fi
  stopped+=("leftover-pid-$pid")
done < <(ps -eo pid=,args=)

# The controller manager, the apiserver (and moto) first, etcd once the apiserver is gone.
stop_pids ${first[@]+"${first[@]}"}
stop_pids ${last[@]+"${last[@]}"}

rm -rf "$pid_dir" "$state_dir/etcd" "$state_dir/certs"
rm -f "$state_dir/env" "$state_dir/kubeconfig" "$state_dir/kube-controller-manager.kubeconfig" \
  "$state_dir/seed.json" "$state_dir/state"

if [ ${#stopped[@]} -gt 0 ]; then
  log "stopped: ${stopped[*]}"
else
  log "nothing was running"
fi
