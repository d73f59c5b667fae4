#!/usr/bin/env bash
# shellcheck disable=SC2154  # seed_* variables are set by load_seed (eval)
# Starts (or reuses) the local dev environment: etcd + kube-apiserver built from source, and a moto
# server standing in for two AWS accounts, seeded for the operator. Writes target/devenv/env:
#   set -a; . target/devenv/env
# Reuse: if a previous run's processes are alive and healthy, only the CRDs/AwsAccount and the env
# file are refreshed. Otherwise leftovers are stopped (down.sh) and everything starts fresh.
# CRDS_DIR overrides where the CRDs are read from (default: crds/ in the repo root).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

crds_dir=${CRDS_DIR:-$repo_root/crds}
certs_dir="$state_dir/certs"
kubeconfig="$state_dir/kubeconfig"
seed_json="$state_dir/seed.json"
state_file="$state_dir/state"   # ports and binary dir of the running environment
venv_python="$venv_dir/bin/python"
start=$SECONDS

check_prerequisites() {
  local v
  command -v go >/dev/null 2>&1 || die "Go 1.24+ is needed to build kube-apiserver and etcd (https://go.dev/dl)"
  v=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  version_at_least "$v" 1.24 || die "Go 1.24+ is needed to build kube-apiserver (found $v)"
  command -v python3 >/dev/null 2>&1 || die "python3 3.10+ is needed (moto 5 requires 3.10)"
  v=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  version_at_least "$v" 3.10 || die "python3 3.10+ is needed for moto (found $v)"
  local tool
  for tool in kubectl openssl curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (install it with your package manager)"
  done
  [ -d "$crds_dir" ] || die "crds/ missing: run make crds"
}

# The venv survives env-down; it is (re)installed only when requirements.txt changes.
ensure_venv() {
  local req="$devenv_dir/requirements.txt" stamp="$venv_dir/.devenv-requirements.sha256" want
  want=$(file_sha256 "$req")
  if [ -x "$venv_python" ] && "$venv_python" -c '' 2>/dev/null &&
     [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if ! [ -x "$venv_python" ] || ! "$venv_python" -c '' 2>/dev/null; then
    log "creating Python venv in target/venv"
    rm -rf "$venv_dir"
    python3 -m venv "$venv_dir" ||
      die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  log "installing hack/devenv/requirements.txt into target/venv"
  "$venv_python" -m pip install --quiet --disable-pip-version-check -r "$req" >"$venv_dir/pip.log" 2>&1 ||
    { tail -n 20 "$venv_dir/pip.log" >&2; die "pip install failed (full log: target/venv/pip.log)"; }
  echo "$want" >"$stamp"
}

apiserver_ready() {
  [ "$(curl -sf --max-time 5 --cacert "$certs_dir/ca.crt" --cert "$certs_dir/admin.crt" \
        --key "$certs_dir/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz")" = ok ]
}
etcd_ready() { curl -sf --max-time 5 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
moto_ready() { curl -sf --max-time 5 -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/"; }

# True when the previous run's processes are all alive and answering, and moto still has our seed.
running_env_healthy() {
  [ -f "$state_file" ] && [ -f "$seed_json" ] && [ -f "$kubeconfig" ] || return 1
  local name
  for name in "${devenv_components[@]}"; do component_pid "$name" >/dev/null || return 1; done
  # shellcheck source=/dev/null
  . "$state_file"
  apiserver_ready && moto_ready || return 1
  "$venv_python" "$devenv_dir/seed.py" check --endpoint "http://127.0.0.1:$MOTO_PORT" --seed "$seed_json" >/dev/null
}

# A CA, the apiserver's serving cert, an admin client cert (system:masters) and the
# service-account signing key pair; all throwaway, regenerated on every fresh start.
generate_certs() {
  (
    umask 077
    mkdir -p "$certs_dir"
    cd "$certs_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 -subj "/CN=devenv-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    issue() { # name subject extensions
      openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
        -days 365 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    issue apiserver "/CN=kube-apiserver" \
      "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment')"
    issue admin "/O=system:masters/CN=admin" \
      "$(printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment')"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

b64() { openssl base64 -A <"$1"; }

write_kubeconfig() {
  (
    umask 077
    cat >"$kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: devenv
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$certs_dir/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$certs_dir/admin.crt")
    client-key-data: $(b64 "$certs_dir/admin.key")
contexts:
- name: devenv
  context: {cluster: devenv, user: admin, namespace: default}
current-context: devenv
EOF
  )
  mv "$kubeconfig.tmp" "$kubeconfig"
}

cleanup_failed_start() {
  local rc=$?
  [ "$rc" -eq 0 ] && return 0
  log "startup failed; stopping what was started (logs stay in $log_dir)"
  "$devenv_dir/down.sh" || true
  exit "$rc"
}

start_fresh() {
  "$devenv_dir/down.sh"
  rm -rf "$log_dir"
  mkdir -p "$state_dir" "$log_dir" "$pid_dir"
  # From here on a failure stops whatever was started (the logs stay for a look).
  trap cleanup_failed_start EXIT

  local bin_dir
  log "ensuring kube-apiserver and etcd are built (hack/build-controlplane.sh; the first build takes several minutes)"
  bin_dir=$("$repo_root/hack/build-controlplane.sh" | tail -n 1)
  if ! [ -x "$bin_dir/etcd" ] || ! [ -x "$bin_dir/kube-apiserver" ]; then
    die "build-controlplane.sh gave no binaries in '$bin_dir'"
  fi

  { read -r ETCD_PORT; read -r ETCD_PEER_PORT; read -r APISERVER_PORT; read -r MOTO_PORT; } < <(free_ports 4)
  generate_certs

  start_component etcd "$bin_dir/etcd" \
    --name devenv \
    --data-dir "$state_dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "devenv=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync  # throwaway data: skip fsync for speed
  # moto starts in parallel; managed policies are loaded so AWS-managed policy ARNs can be attached.
  MOTO_IAM_LOAD_MANAGED_POLICIES=true start_component moto \
    "$venv_dir/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  wait_for etcd 60 etcd_ready

  # Flags modelled on controller-runtime's envtest.
  start_component kube-apiserver "$bin_dir/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --cert-dir "$certs_dir" \
    --tls-cert-file "$certs_dir/apiserver.crt" \
    --tls-private-key-file "$certs_dir/apiserver.key" \
    --client-ca-file "$certs_dir/ca.crt" \
    --secure-port "$APISERVER_PORT" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC \
    --disable-admission-plugins ServiceAccount \
    --service-account-issuer "https://127.0.0.1:$APISERVER_PORT" \
    --service-account-key-file "$certs_dir/sa.pub" \
    --service-account-signing-key-file "$certs_dir/sa.key" \
    --allow-privileged=true \
    --endpoint-reconciler-type none  # 127.0.0.1 is not a valid Endpoints address; avoids log spam

  # Seed moto while the apiserver starts up.
  wait_for moto 60 moto_ready
  log "seeding moto (accounts 123456789012 and 111111111111), then enforcing IAM"
  (umask 077; "$venv_python" "$devenv_dir/seed.py" seed --endpoint "http://127.0.0.1:$MOTO_PORT" --out "$seed_json" >&2)

  wait_for kube-apiserver 120 apiserver_ready
  write_kubeconfig
  cat >"$state_file" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
MOTO_PORT=$MOTO_PORT
BIN_DIR=$(printf '%q' "$bin_dir")
EOF
  trap - EXIT
}

apply_kubernetes_objects() {
  export KUBECONFIG="$kubeconfig"
  kubectl apply -f "$crds_dir" >&2
  kubectl wait --for condition=established --timeout=60s \
    crd/awsaccounts.crossaccount.io crd/crossaccountroles.crossaccount.io >&2
  kubectl apply -f - >&2 <<EOF
apiVersion: crossaccount.io/v1alpha1
kind: AwsAccount
metadata: {name: target}
spec:
  accountId: "$seed_target_account_id"
  managementRoleArn: $seed_management_role_arn
  allowedNamespaces: {selector: {matchLabels: {crossaccount.io/tenant: "true"}}}
  allowedPolicyArns: ["arn:aws:iam::aws:policy/*", "arn:aws:iam::$seed_target_account_id:policy/*"]
  allowInlinePolicies: true
  # The test bed's moto has no boundary policy to cap inline policies with; a real account
  # should set permissionsBoundaryArn instead.
  allowInlinePoliciesWithoutBoundary: true
  allowedTrustPrincipals: ["arn:aws:iam::$seed_source_account_id:user/*", "arn:aws:iam::$seed_source_account_id:role/*"]
  allowedGrants:
    - namespaces: {selector: {matchLabels: {crossaccount.io/tenant: "true"}}}
      principals: ["arn:aws:iam::$seed_source_account_id:user/*", "arn:aws:iam::$seed_source_account_id:role/*"]
EOF
}

# Loads seed.json into shell variables seed_<key> (one python start instead of one per field).
load_seed() {
  eval "$(python3 -c '
import json, shlex, sys
for k, v in json.load(open(sys.argv[1])).items():
    print("seed_%s=%s" % (k, shlex.quote(str(v))))' "$seed_json")"
}

# The env file other tooling sources; the required names must stay exactly as they are.
write_env_file() {
  (
    umask 077
    {
      echo "# Written by hack/devenv/up.sh; load with: set -a; . target/devenv/env"
      printf 'export %s=%q\n' \
        KUBECONFIG "$kubeconfig" \
        AWS_ENDPOINT_URL "http://127.0.0.1:$MOTO_PORT" \
        AWS_REGION us-east-1 \
        AWS_DEFAULT_REGION us-east-1 \
        AWS_ACCESS_KEY_ID "$seed_access_key_id" \
        AWS_SECRET_ACCESS_KEY "$seed_secret_access_key" \
        SOURCE_ACCOUNT_ID "$seed_source_account_id" \
        TARGET_ACCOUNT_ID "$seed_target_account_id" \
        MANAGEMENT_ROLE_ARN "$seed_management_role_arn" \
        TARGET_ACCOUNT_NAME target \
        TARGET_BUCKET "$seed_target_bucket" \
        DEVELOPER_USER_ARN "$seed_developer_user_arn"
    } >"$state_dir/env.tmp"
  )
  mv "$state_dir/env.tmp" "$state_dir/env"
}

check_prerequisites
mkdir -p "$state_dir"
ensure_venv
if running_env_healthy; then
  log "reusing the running environment (apiserver :$APISERVER_PORT, moto :$MOTO_PORT)"
  mode=reused
else
  start_fresh
  mode=started
fi
load_seed
apply_kubernetes_objects
write_env_file

cat >&2 <<EOF
[devenv] environment $mode in $((SECONDS - start))s
  kube-apiserver  https://127.0.0.1:$APISERVER_PORT   (kubeconfig: target/devenv/kubeconfig)
  etcd            http://127.0.0.1:$ETCD_PORT
  moto (AWS)      http://127.0.0.1:$MOTO_PORT   source 123456789012, target 111111111111
  logs            target/devenv/logs/
  load it with:   set -a; . target/devenv/env
  stop it with:   make env-down   (hack/devenv/down.sh)
EOF
