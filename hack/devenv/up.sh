#!/usr/bin/env bash
# shellcheck disable=SC2154  # seed_* variables are set by load_seed (eval)
# Starts (or reuses) the local dev environment: etcd, kube-apiserver and kube-controller-manager
# built from source, and a moto server standing in for two AWS accounts, seeded for the operator.
# Writes target/devenv/env:
#   set -a; . target/devenv/env
# Reuse: if a previous run's processes are alive and healthy, only the CRDs/AwsAccount and the env
# file are refreshed. Otherwise leftovers are stopped (down.sh) and everything starts fresh.
# CRDS_DIR overrides where the CRDs are read from (default: crds/ in the repo root).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

crds_dir=${CRDS_DIR:-$repo_root/crds}
kubeconfig="$state_dir/kubeconfig"
kcm_kubeconfig="$state_dir/kube-controller-manager.kubeconfig"
seed_json="$state_dir/seed.json"
state_file="$state_dir/state"   # ports and binary dir of the running environment
venv_python="$venv_dir/bin/python"
start=$SECONDS

# Every controller that is on by default, as on a cluster. Those that cannot run here switch
# themselves off: the cloud ones (no cloud provider), node IPAM (no --allocate-node-cidrs) and CSR
# signing (no signing key). The node-related ones (node lifecycle, taint eviction, attach/detach,
# TTL) run idle, as no node ever registers (no kubelet).
kcm_controllers='*'

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

etcd_ready() { curl -sf --max-time 5 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
moto_ready() { curl -sf --max-time 5 -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/"; }

# True when the previous run's processes are all alive and answering, and moto still has our seed.
running_env_healthy() {
  [ -f "$state_file" ] && [ -f "$seed_json" ] && [ -f "$kubeconfig" ] || return 1
  local name
  for name in "${devenv_components[@]}"; do component_pid "$name" >/dev/null || return 1; done
  # shellcheck source=/dev/null
  . "$state_file"
  apiserver_ready && kcm_ready && moto_ready || return 1
  "$venv_python" "$devenv_dir/seed.py" check --endpoint "http://127.0.0.1:$MOTO_PORT" --seed "$seed_json" >/dev/null
}

# A CA, the apiserver's serving cert, an admin client cert (system:masters), the controller
# manager's client cert (user system:kube-controller-manager, which the apiserver's bootstrap RBAC
# policy binds to the role it needs) and serving cert, and the service-account signing key pair;
# all throwaway, regenerated on every fresh start.
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
    issue kube-controller-manager "/CN=system:kube-controller-manager" \
      "$(printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment')"
    issue kube-controller-manager-serving "/CN=kube-controller-manager" \
      "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment')"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

b64() { openssl base64 -A <"$1"; }

# write_kubeconfig PATH USER CERT_NAME: a kubeconfig for the apiserver with the client cert
# $certs_dir/CERT_NAME.{crt,key}.
write_kubeconfig() {
  local path=$1 user=$2 cert=$3
  (
    umask 077
    cat >"$path.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: devenv
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$certs_dir/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$certs_dir/$cert.crt")
    client-key-data: $(b64 "$certs_dir/$cert.key")
contexts:
- name: devenv
  context: {cluster: devenv, user: $user, namespace: default}
current-context: devenv
EOF
  )
  mv "$path.tmp" "$path"
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
  log "ensuring etcd, kube-apiserver and kube-controller-manager are built (hack/build-controlplane.sh; the first build takes several minutes)"
  bin_dir=$("$repo_root/hack/build-controlplane.sh" | tail -n 1)
  local binary
  for binary in etcd kube-apiserver kube-controller-manager; do
    [ -x "$bin_dir/$binary" ] || die "build-controlplane.sh gave no $binary in '$bin_dir'"
  done

  { read -r ETCD_PORT; read -r ETCD_PEER_PORT; read -r APISERVER_PORT; read -r MOTO_PORT; read -r KCM_PORT; } < <(free_ports 5)
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

  # Flags modelled on controller-runtime's envtest. --shutdown-watch-termination-grace-period makes
  # it end the watches on SIGTERM: otherwise the controller manager's open HTTP/2 watch streams hold
  # its shutdown for up to a minute, and restart-apiserver.sh and down.sh would have to SIGKILL it.
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
    --shutdown-watch-termination-grace-period 2s \
    --endpoint-reconciler-type none  # 127.0.0.1 is not a valid Endpoints address; avoids log spam

  # Seed moto while the apiserver starts up.
  wait_for moto 60 moto_ready
  log "seeding moto (accounts 123456789012 and 111111111111), then enforcing IAM"
  (umask 077; "$venv_python" "$devenv_dir/seed.py" seed --endpoint "http://127.0.0.1:$MOTO_PORT" --out "$seed_json" >&2)

  wait_for kube-apiserver 120 apiserver_ready
  write_kubeconfig "$kubeconfig" admin admin
  write_kubeconfig "$kcm_kubeconfig" system:kube-controller-manager kube-controller-manager
  start_kube_controller_manager "$bin_dir"
  cat >"$state_file" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
MOTO_PORT=$MOTO_PORT
KCM_PORT=$KCM_PORT
BIN_DIR=$(printf '%q' "$bin_dir")
EOF
  trap - EXIT
}

# kube-controller-manager, once the apiserver is ready: its own identity (user
# system:kube-controller-manager, bound by the apiserver's bootstrap RBAC policy) for its
# kubeconfig and for checking who calls its /healthz, and one service account per controller
# (--use-service-account-credentials), as on a cluster, so each controller has only its bootstrap
# role's permissions; their tokens are signed with the apiserver's service-account key. The client
# CA for callers of its endpoints is given, so it does not look the authentication configuration
# up in the cluster (--authentication-skip-lookup): that would also look for a request-header CA,
# which this apiserver has none of, and log an error every few seconds. Without leader election:
# there is one. It rides out an apiserver restart (restart-apiserver.sh) by retrying, as on a
# cluster.
start_kube_controller_manager() {
  local bin_dir=$1
  start_component kube-controller-manager "$bin_dir/kube-controller-manager" \
    --kubeconfig "$kcm_kubeconfig" \
    --authentication-kubeconfig "$kcm_kubeconfig" \
    --authorization-kubeconfig "$kcm_kubeconfig" \
    --client-ca-file "$certs_dir/ca.crt" \
    --authentication-skip-lookup \
    --use-service-account-credentials \
    --service-account-private-key-file "$certs_dir/sa.key" \
    --root-ca-file "$certs_dir/ca.crt" \
    --controllers "$kcm_controllers" \
    --leader-elect=false \
    --bind-address 127.0.0.1 \
    --secure-port "$KCM_PORT" \
    --tls-cert-file "$certs_dir/kube-controller-manager-serving.crt" \
    --tls-private-key-file "$certs_dir/kube-controller-manager-serving.key"
  wait_for kube-controller-manager 120 kcm_ready
}

apply_kubernetes_objects() {
  export KUBECONFIG="$kubeconfig"
  # The CRDs only: the guardrails' admission policy (admission-policy.yaml) would refuse the
  # objects the tests of the operator's own refusals create; tests/admission.rs installs it,
  # bound to its own namespaces.
  kubectl apply -f "$crds_dir/awsaccounts.yaml" -f "$crds_dir/crossaccountroles.yaml" >&2
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
        DEVELOPER_USER_ARN "$seed_developer_user_arn" \
        SOURCE_ADMIN_ACCESS_KEY_ID "$seed_admin_access_key_id" \
        SOURCE_ADMIN_SECRET_ACCESS_KEY "$seed_admin_secret_access_key"
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
  kube-ctrl-mgr   https://127.0.0.1:$KCM_PORT/healthz
  etcd            http://127.0.0.1:$ETCD_PORT
  moto (AWS)      http://127.0.0.1:$MOTO_PORT   source 123456789012, target 111111111111
  logs            target/devenv/logs/
  load it with:   set -a; . target/devenv/env
  stop it with:   make env-down   (hack/devenv/down.sh)
EOF
