# cross-account-operator developer commands. `make test` is what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
ENV_FILE := target/devenv/env
CONSUMERS_ENV_FILE := target/consumers/env

.PHONY: help build crds fmt lint chart-lint unit integration test env-up env-down demo demo-repeat bench consumers-deps image

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build the operator and crdgen
	$(CARGO) build --bins

crds: ## Regenerate crds/ (and the Helm chart's copies) from the Rust API types
	$(CARGO) run -q --bin crdgen -- --out crds
	cp crds/awsaccounts.yaml crds/crossaccountroles.yaml charts/cross-account-operator/crds/
	cp crds/admission-policy.yaml charts/cross-account-operator/files/

fmt: ## Check formatting
	$(CARGO) fmt --all -- --check

lint: ## Clippy with warnings as errors, and imports that run one way (hack/check-imports.py)
	$(CARGO) clippy --all-targets -- -D warnings
	python3 hack/check-imports.py

chart-lint: ## Third-party linters (checkov, kube-score, kubernetes-validate per Kubernetes minor, hadolint) on the chart's renders and the Dockerfile, against hack/chart-lint/baseline.yaml
	hack/chart-lint/run.sh

unit: ## Pure unit tests (no environment needed); includes the check that crds/ is current
	$(CARGO) test --lib --bins

demo: ## The main job: apply examples/ on the local environment and use the minted credentials
	hack/demo.sh

demo-repeat: ## make demo DEMO_RUNS times (default 10), each on a fresh environment: no failure, no Warning event
	hack/demo-repeat.sh

env-up: ## Start the local Kubernetes + AWS environment and write target/devenv/env
	hack/devenv/up.sh

env-down: ## Stop the local environment
	hack/devenv/down.sh

consumers-deps: ## The SDK consumers of tests/consumers.rs (Go v2, JavaScript v3), built once per version into the user cache
	hack/consumers/install.sh

IMAGE_PROFILE ?= release
image: ## The operator image as an OCI layout in target/image/oci, without a container engine (hack/image/build.sh; IMAGE_PROFILE=dev for a quick build)
	IMAGE_PROFILE=$(IMAGE_PROFILE) hack/image/build.sh >/dev/null

integration: consumers-deps ## Integration tests against a running environment (make env-up first)
	@test -f $(ENV_FILE) || { echo "no $(ENV_FILE): run 'make env-up' first" >&2; exit 1; }
	$(CARGO) build --example sdk-consumer
	set -a; . $(ENV_FILE); . $(CONSUMERS_ENV_FILE); set +a; $(CARGO) test --no-fail-fast --test '*' -- --test-threads=4

BENCH_N ?= 200
bench: ## Benchmark at BENCH_N objects (default 200) beside the floor and ACK; writes target/bench/ (tables, JSON, PNG plots)
	$(CARGO) bench --bench convergence --no-run
	peer=$$(bench/peer/build-ack.sh); \
	  plot=$$(hack/python-venv.sh bench/plot/requirements.txt bench)/bin/python; \
	  hack/devenv/down.sh; hack/devenv/up.sh; status=0; \
	  ( set -a; . $(ENV_FILE); eval "$$peer"; BENCH_N=$(BENCH_N); set +a; \
	    $(CARGO) bench --bench convergence ) || status=$$?; \
	  hack/devenv/down.sh; \
	  if [ $$status = 0 ]; then "$$plot" bench/plot/plot.py "$${BENCH_OUT:-target/bench}/results.json"; fi; \
	  exit $$status

# The image's test (tests/image.rs) needs only the layout, not the optimised binary: `make test`
# builds it with the dev profile, which saves about ten minutes of a cold run.
test: fmt lint unit chart-lint consumers-deps ## Everything: checks, unit tests, the image, environment up, integration tests, environment down
	$(MAKE) --no-print-directory image IMAGE_PROFILE=dev
	$(CARGO) build --bins --tests --examples
	hack/install-helm.sh >/dev/null
	status=0; hack/devenv/up.sh && $(MAKE) --no-print-directory integration || status=$$?; \
	  hack/devenv/down.sh; exit $$status
