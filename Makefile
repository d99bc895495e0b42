# umi: the two entry points for a fresh machine are `make run` and `make test`; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.umi-installed
PROFILE ?= cpu

.PHONY: setup run test test-fast lint lock data clean image

setup: $(STAMP)

# Exact versions of every package come from requirements.lock (installed --no-deps, so nothing floats).
# bfcl-eval is in the lock but must not pull its ~30 API SDKs or its numpy==1.26 pin: --no-deps covers that too.
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# The main job on the embedded defaults (BFCL data, SmolLM2-135M backbone, the `cpu` profile).
# The ToolBench out-of-domain set comes from the shared fixtures (../shared/fixtures, see the README), named to umi
# by UMI_FIXTURES (no umi default points there). Without them the set is switched off by name, and said so; the
# report then lists it as switched off.
FIXTURES ?= $(or $(UMI_FIXTURES),../shared/fixtures)
run: setup
	@if [ -f "$(FIXTURES)/alpha-umi/toolbench_out_of_domain_test.json" ]; then \
	  UMI_FIXTURES="$(abspath $(FIXTURES))" $(BIN)/umi run --profile $(PROFILE); \
	else \
	  echo "no ToolBench fixtures at $(FIXTURES): evaluating without the out-of-domain set (--no-toolbench-ood)"; \
	  $(BIN)/umi run --profile $(PROFILE) --no-toolbench-ood; \
	fi

test: setup lint
	$(BIN)/python -m pytest

# ruff's checks (pyproject.toml [tool.ruff]) and its formatting, as part of `make test`
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The production image of a built Bento (opt-in, not part of test; needs root, debootstrap and a Docker daemon):
# docs/serving.md "The container image".
BENTO ?= umi-agent:latest
image: setup
	UMI_IMAGE_PYTHON=$(BIN)/python bash deploy/image.sh $(BENTO)

# Re-pin: a fresh venv from pyproject.toml (+ bfcl-eval --no-deps), frozen into requirements.lock.
lock:
	rm -rf /tmp/umi-lock-venv && $(PYTHON) -m venv /tmp/umi-lock-venv
	/tmp/umi-lock-venv/bin/python -m pip install --quiet torch==2.13.0 -e '.[test]'
	/tmp/umi-lock-venv/bin/python -m pip install --quiet --no-deps bfcl-eval
	/tmp/umi-lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
	@echo "requirements.lock: $$(wc -l < requirements.lock) packages"

clean:
	rm -rf $(VENV) artifacts mlruns mlflow.db
