#!/usr/bin/env bash
# Third-party linters on what the chart renders and on the Dockerfile, against a reviewed baseline
# of accepted findings (hack/chart-lint/baseline.yaml, each with its reason). A finding the baseline
# does not hold fails, and so does an entry nothing reports any more (the baseline stays reviewed).
#
# Renders: the ci/ values files (the defaults, and every option on), and the defaults at each
# Kubernetes minor the chart claims (Chart.yaml kubeVersion: 1.28 up to the newest schemas of
# kubernetes-validate). Linters: checkov (kubernetes and dockerfile), kube-score, kubernetes-validate
# --strict per minor (and the CRDs), hadolint. All are installed from the registries (PyPI, the Go
# module proxy) into the user cache, once per version. First of all, the chart's README.md must be
# what helm-docs generates from README.md.gotmpl and values.yaml (hack/chart-readme.sh --check).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/hack/chart-lint"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cross-account-operator"
kube_score_version=v1.20.0
first_minor=28
last_minor=37
out="$root/target/chart-lint"

# Regenerated in a copy and compared; fails with what differs and how to regenerate.
"$root/hack/chart-readme.sh" --check

mkdir -p "$cache/bin" "$cache/linters"
exec 9>"$cache/linters/.install.lock"
command -v flock >/dev/null 2>&1 && flock 9

# Python linters: one virtualenv per set of pinned versions.
venv=$("$root/hack/python-venv.sh" "$here/requirements.txt" linters)

kube_score=$("$root/hack/install-go-tool.sh" kube-score github.com/zegl/kube-score "$kube_score_version" ./cmd/kube-score)
exec 9>&-

helm=$("$root/hack/install-helm.sh")
chart="$root/charts/cross-account-operator"
rm -rf "$out"
mkdir -p "$out/renders" "$out/reports"
render() { "$helm" template cao "$chart" --namespace ops "$@"; }
render -f "$chart/ci/default-values.yaml" > "$out/renders/default.yaml"
render -f "$chart/ci/every-option-values.yaml" > "$out/renders/every-option.yaml"

for render_file in "$out"/renders/*.yaml; do
  name=$(basename "$render_file" .yaml)
  "$venv/bin/checkov" -f "$render_file" --framework kubernetes -o json --quiet --compact \
    --skip-download > "$out/reports/checkov-$name.json" 2>"$out/reports/checkov-$name.err" || true
  "$kube_score" score -o json "$render_file" > "$out/reports/kube-score-$name.json" || true
done
for minor in $(seq "$first_minor" "$last_minor"); do
  render -f "$chart/ci/every-option-values.yaml" --kube-version "1.$minor.0" > "$out/renders-1.$minor.yaml"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "1.$minor.0" \
    "$out/renders-1.$minor.yaml" "$root/crds/awsaccounts.yaml" "$root/crds/crossaccountroles.yaml" \
    > "$out/reports/kubernetes-validate-1.$minor.txt" 2>&1 || true
done
"$venv/bin/checkov" -f "$root/Dockerfile" --framework dockerfile -o json --quiet --compact \
  --skip-download > "$out/reports/checkov-dockerfile.json" 2>"$out/reports/checkov-dockerfile.err" || true
"$venv/bin/hadolint" -f json "$root/Dockerfile" > "$out/reports/hadolint.json" || true

"$venv/bin/python" "$here/compare.py" "$out/reports" "$here/baseline.yaml"
