#!/usr/bin/env bash
# Installs a pinned helm-docs binary (generates the chart's README.md from README.md.gotmpl,
# Chart.yaml and the `# --` comments of values.yaml), built from the Go module proxy into the
# user's cache directory once per version (hack/install-go-tool.sh). Prints the path of the
# binary, so scripts can call it every time:
#   helm_docs=$(hack/install-helm-docs.sh)
# hack/chart-readme.sh regenerates the README with it. HELM_DOCS_VERSION overrides the pinned
# version (a tag the Go module proxy has).
set -euo pipefail

version=${HELM_DOCS_VERSION:-v1.14.2}
# helm-docs' release builds stamp its version (without the v), which the default README template
# prints in its footer; do the same, so that this build writes what a released binary writes.
GO_TOOL_LDFLAGS="-X main.version=${version#v}" exec "$(dirname "$0")/install-go-tool.sh" \
  helm-docs github.com/norwoodj/helm-docs "$version" ./cmd/helm-docs
