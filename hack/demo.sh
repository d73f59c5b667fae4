#!/usr/bin/env bash
# make demo: the console procedure for cross-account access, done with `kubectl apply` on the local
# environment. Builds the operator, starts the environment and the operator, applies examples/,
# then uses only the Secret's credentials file to read and (not) write the production bucket.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=devenv/lib.sh
. hack/devenv/lib.sh

say() { printf '\n==> %s\n' "$*"; }

say "building the operator"
cargo build --quiet --bin cross-account-operator

say "starting the local environment (kube-apiserver, etcd, moto)"
hack/devenv/up.sh
set -a; . target/devenv/env; set +a

if ! component_pid operator >/dev/null; then
  read -r port < <(free_ports 1)
  start_component operator target/debug/cross-account-operator \
    --cluster-name demo --http-addr "127.0.0.1:$port" --resync-interval 1m
  echo "$port" >"$state_dir/operator.port"
fi
port=$(cat "$state_dir/operator.port")
operator_ready() { curl -sf --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null; }
wait_for operator 60 operator_ready
echo "operator running (log: target/devenv/logs/operator.log, metrics: http://127.0.0.1:$port/metrics)"

say "applying examples/ (namespace, AwsAccount production, CrossAccountRole cross-account-signin)"
kubectl apply -f examples/00-namespace.yaml -f examples/10-awsaccount.yaml -f examples/20-crossaccountrole.yaml
kubectl wait --for=condition=Ready awsaccount/production --timeout=60s
kubectl wait --for=condition=Ready -n demo crossaccountrole/cross-account-signin --timeout=120s
kubectl get crossaccountrole -n demo

say "using only the Secret's credentials file"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kubectl get secret -n demo cross-account-signin-aws -o jsonpath='{.data.credentials}' | base64 -d >"$work/credentials"
kubectl get secret -n demo cross-account-signin-aws -o jsonpath='{.data.config}' | base64 -d >"$work/config"
as_role() {
  env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE \
    AWS_SHARED_CREDENTIALS_FILE="$work/credentials" AWS_CONFIG_FILE="$work/config" \
    target/venv/bin/aws "$@"
}
identity=$(as_role sts get-caller-identity --query Arn --output text)
echo "acting as $identity"

echo "listing s3://$TARGET_BUCKET (allowed by AmazonS3ReadOnlyAccess):"
as_role s3 ls "s3://$TARGET_BUCKET"

echo "writing to s3://$TARGET_BUCKET (must be denied):"
if echo "demo" | as_role s3 cp - "s3://$TARGET_BUCKET/demo.txt" 2>"$work/put.err"; then
  echo "error: the write succeeded, but the role only allows reading" >&2
  exit 1
fi
grep -o 'AccessDenied.*' "$work/put.err" || cat "$work/put.err"

expires=$(kubectl get crossaccountrole -n demo cross-account-signin -o jsonpath='{.status.credentials.expiration}')
next=$(kubectl get crossaccountrole -n demo cross-account-signin -o jsonpath='{.status.credentials.nextRefresh}')
cat <<SUMMARY

Done. The role CrossAccountSignin exists in account $TARGET_ACCOUNT_ID, trusted by the operator (with
an external ID) and by devTest in account $SOURCE_ACCOUNT_ID; its credentials are in the Secret
demo/cross-account-signin-aws, valid until $expires and refreshed at $next.

Look around:
  set -a; . target/devenv/env; set +a
  kubectl get xar -A
  kubectl describe xar -n demo cross-account-signin
  kubectl get secret -n demo cross-account-signin-aws -o yaml
Stop everything (environment and operator):
  make env-down
SUMMARY
