# modalmesh — `make help` lists the targets. Everything installs into .venv at the repository root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRITON_VENV := .venv-tritonclient
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_PEERS_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install system-packages up down status test test-fast lint manifests protos bench bench-peers clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

# tritonclient pins protobuf < 7: it lives in its own environment, used by the compatibility tests.
$(TRITON_VENV)/.installed:
	@test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet 'tritonclient[grpc]==2.73.0'
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP) system-packages ## Install modalmesh and its tools into .venv (fast when nothing changed)

system-packages: ## Install the Debian packages it runs (mosquitto, espeak-ng, sox, chromium) when one is missing
	@bash scripts/system_packages.sh

up: $(STAMP) system-packages ## Install, then run the local mesh: every workload with mutual TLS (Ctrl-C stops it)
	$(VENV)/bin/modalmesh up

down: ## Stop a mesh started with `modalmesh up --detach`
	$(VENV)/bin/modalmesh down

status: ## Show what the local mesh runs, where, and its health
	$(VENV)/bin/modalmesh status

test: $(STAMP) system-packages $(TRITON_VENV)/.installed node_modules/.installed ## Install, then run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) system-packages $(TRITON_VENV)/.installed node_modules/.installed ## The test suite without tests marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) node_modules/.installed ## Lint protos (buf), YAML (yamllint), the Dockerfile (hadolint); check generated manifests
	npx --no-install buf lint
	$(VENV)/bin/yamllint --strict mesh skaffold.yaml
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/modalmesh mesh render --check

manifests: $(STAMP) ## Regenerate the Kubernetes/Istio/skaffold files from mesh/workloads.yaml and mesh/policy.yaml
	$(VENV)/bin/modalmesh mesh render

protos: $(STAMP) ## Regenerate the Python stubs from protos/
	$(PY) scripts/generate_protos.py

bench: $(STAMP) system-packages ## Run the benchmarks of every service (print ratios, write JSON records)
	$(PY) bench/embed_batching.py
	$(PY) bench/generate_batching.py
	$(PY) bench/iot_ingest.py
	$(PY) bench/iot_models.py
	$(PY) bench/audio_rtf.py
	$(PY) bench/vision_inspect.py
	$(PY) bench/segment_volume.py

# The peers' own environments (bench/.venv-ray, bench/.venv-pytriton) are made by the script on first use.
bench-peers: $(STAMP) ## modalmesh vs Ray Serve vs PyTriton on the same model (BENCH_PEERS_ARGS="--quick" for a smoke test)
	$(PY) bench/embed_peers.py $(BENCH_PEERS_ARGS)

clean: ## Remove the virtual environments, node_modules and local mesh state
	rm -rf $(VENV) $(TRITON_VENV) bench/.venv-ray bench/.venv-pytriton .gpu-kit node_modules .modalmesh .pytest_cache .hypothesis
