# Shared helpers for hack/devenv/*.sh. Source it; it defines paths and functions only.
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this

devenv_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$devenv_dir/../.." && pwd)
state_dir="$repo_root/target/devenv"   # certs, etcd data, logs, pids, kubeconfig, env
venv_dir="$repo_root/target/venv"      # kept across env-down so restarts are fast
log_dir="$state_dir/logs"
pid_dir="$state_dir/pids"
certs_dir="$state_dir/certs"

# The processes we manage, in the order down.sh stops them: the controller manager and the
# apiserver first, because a kube-apiserver that is still starting up ignores SIGTERM while its
# etcd is gone.
devenv_components=(kube-controller-manager kube-apiserver moto etcd)

log() { printf '[devenv] %s\n' "$*" >&2; }
die() { printf '[devenv] error: %s\n' "$*" >&2; exit 1; }

# free_ports N: prints N distinct free loopback TCP ports, one per line. All sockets are held open
# until every port is picked, so the same port cannot be handed out twice.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# The command line a component's pid must show, so a recycled pid never gets mistaken for ours.
component_pattern() {
  case $1 in
    kube-apiserver) echo kube-apiserver ;;
    kube-controller-manager) echo kube-controller-manager ;;
    etcd) echo etcd ;;
    moto) echo moto_server ;;
    operator) echo cross-account-operator ;;
    *) return 1 ;;
  esac
}

# component_pid NAME: prints the pid from the pid file if that process is alive and is ours.
component_pid() {
  local name=$1 pid_file="$pid_dir/$1.pid" pid args
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  pid_running "$pid" || return 1
  args=$(ps -p "$pid" -o args= 2>/dev/null) || return 1
  [[ $args == *"$(component_pattern "$name")"* ]] || return 1
  echo "$pid"
}

# start_component NAME CMD...: runs CMD detached (immune to the terminal's hangup), logging to
# logs/NAME.log, and records its pid.
start_component() {
  local name=$1; shift
  mkdir -p "$log_dir" "$pid_dir"
  nohup "$@" >"$log_dir/$name.log" 2>&1 </dev/null &
  echo $! >"$pid_dir/$name.pid"
}

# pid_running PID: alive and not a zombie (a zombie child of up.sh still answers kill -0).
pid_running() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $stat != Z* ]]
}

# stop_pids PID...: SIGTERM to all at once, wait up to 15 s, then SIGKILL the rest; returns once
# every one of them is gone.
stop_pids() {
  local deadline=$((SECONDS + 15)) pid alive
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  while :; do
    alive=()
    for pid in "$@"; do pid_running "$pid" && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.1
  done
  log "pids ${alive[*]} ignored SIGTERM for 15 s; sending SIGKILL"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  deadline=$((SECONDS + 5))
  for pid in "${alive[@]}"; do
    while pid_running "$pid"; do
      [ "$SECONDS" -ge "$deadline" ] && die "pid $pid survived SIGKILL"
      sleep 0.1
    done
  done
}

# wait_for NAME TIMEOUT_SECONDS CMD...: polls CMD until it succeeds. Fails early, showing the log,
# if component NAME's process died, and fails at the deadline.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! component_pid "$name" >/dev/null; then
      log "$name exited during startup; last lines of $log_dir/$name.log:"
      tail -n 30 "$log_dir/$name.log" >&2 || true
      die "$name failed to start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "last lines of $log_dir/$name.log:"
      tail -n 30 "$log_dir/$name.log" >&2 || true
      die "$name not ready after ${timeout}s"
    fi
    sleep 0.2
  done
}

# version_at_least HAVE NEED: true when dotted version HAVE >= NEED (major.minor compared).
version_at_least() {
  local have_major have_minor need_major need_minor
  IFS=. read -r have_major have_minor _ <<<"$1"
  IFS=. read -r need_major need_minor _ <<<"$2"
  [ "${have_major:-0}" -gt "$need_major" ] ||
    { [ "${have_major:-0}" -eq "$need_major" ] && [ "${have_minor:-0}" -ge "$need_minor" ]; }
}

# sha256 of a file, without depending on sha256sum (Linux) vs shasum (macOS).
file_sha256() {
  python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

# The controllers of kube-controller-manager that up.sh and restart-apiserver.sh wait for (names of their /healthz
# checks): the tests rely on garbage collection, namespace deletion, rollouts, and service
# accounts with their tokens.
kcm_required_controllers=(
  garbage-collector-controller namespace-controller deployment-controller replicaset-controller
  statefulset-controller daemonset-controller serviceaccount-controller serviceaccount-token-controller
)

# Readiness of the apiserver and the controller manager (their ports come from the state file).
apiserver_ready() {
  [ "$(curl -sf --max-time 5 --cacert "$certs_dir/ca.crt" --cert "$certs_dir/admin.crt" \
        --key "$certs_dir/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz")" = ok ]
}
# /healthz of the controller manager lists one check per started controller: ready once the
# controllers the tests rely on run (not only once it serves).
kcm_ready() {
  local body controller
  body=$(curl -sf --max-time 5 --cacert "$certs_dir/ca.crt" --cert "$certs_dir/admin.crt" \
    --key "$certs_dir/admin.key" "https://127.0.0.1:$KCM_PORT/healthz?verbose") || return 1
  for controller in "${kcm_required_controllers[@]}"; do
    grep -qx "\[+\]$controller ok" <<<"$body" || return 1
  done
}
