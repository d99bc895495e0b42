# umi: the two entry points for a fresh machine are `make run` and `make test`; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.umi-installed
PROFILE ?= cpu

.PHONY: setup run test test-fast lint lock data clean image llama-cpp-wheel

setup: $(STAMP)

# llama-cpp-python (the llama.cpp backend, umi.inference.llama_cpp_backend) is on PyPI as an sdist only: its wheel is
# built once per machine (about 8 minutes on 2 cores) into umi's cache, outside the checkout so that a fresh clone on
# the same machine (CI's) reuses it, and installed from there with the rest of the lock. GGML_NATIVE=ON: the wheel is
# built where it runs (CI builds and runs on one machine), so llama.cpp uses every instruction this CPU has (AVX-512,
# bf16); the cache is keyed by the CPU's flags, the compiler and the CMake arguments, so a cache seen by another CPU
# builds anew instead of crashing on an unknown instruction. For a wheel that runs on other machines (an image), pass
# LLAMA_CPP_CMAKE_ARGS="-DGGML_NATIVE=OFF ...". UMI_CACHE's default is umi.inference.gguf_export.umi_cache()'s, which
# also finds the sdist there for its GGUF converter.
UMI_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/umi
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama[-_]cpp[-_]python==//Ip' requirements.lock)
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF
LLAMA_CPP_HOME := $(UMI_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION)
LLAMA_CPP_SDIST := $(LLAMA_CPP_HOME)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP_KEY := $(shell { grep -m1 -E '^(flags|Features)' /proc/cpuinfo; gcc -dumpfullversion; \
  echo '$(LLAMA_CPP_CMAKE_ARGS)'; } 2>/dev/null | sha256sum | cut -c1-16)
LLAMA_CPP_WHEELS := $(LLAMA_CPP_HOME)/wheels-$(LLAMA_CPP_KEY)

llama-cpp-wheel: $(LLAMA_CPP_WHEELS)/built

$(LLAMA_CPP_WHEELS)/built:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or PYTHON=...)"; exit 1; }
	mkdir -p $(LLAMA_CPP_HOME)
	test -f $(LLAMA_CPP_SDIST) || $(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps \
	  --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(LLAMA_CPP_HOME)
	@echo "building llama-cpp-python $(LLAMA_CPP_VERSION) ($(LLAMA_CPP_CMAKE_ARGS)): once per machine, minutes"
	rm -rf $(LLAMA_CPP_WHEELS).tmp
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PYTHON) -m pip wheel --quiet --disable-pip-version-check --no-deps \
	  -w $(LLAMA_CPP_WHEELS).tmp $(LLAMA_CPP_SDIST)
	touch $(LLAMA_CPP_WHEELS).tmp/built
	rm -rf $(LLAMA_CPP_WHEELS) && mv $(LLAMA_CPP_WHEELS).tmp $(LLAMA_CPP_WHEELS)

# Exact versions of every package come from requirements.lock (installed --no-deps, so nothing floats).
# bfcl-eval is in the lock but must not pull its ~30 API SDKs or its numpy==1.26 pin: --no-deps covers that too.
# llama-cpp-python only ever from the wheel built above (--only-binary: never a build by pip without its settings).
$(STAMP): pyproject.toml requirements.lock $(LLAMA_CPP_WHEELS)/built
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --find-links $(LLAMA_CPP_WHEELS) \
	  --only-binary llama-cpp-python -r requirements.lock
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
lock: $(LLAMA_CPP_WHEELS)/built
	rm -rf /tmp/umi-lock-venv && $(PYTHON) -m venv /tmp/umi-lock-venv
	/tmp/umi-lock-venv/bin/python -m pip install --quiet --find-links $(LLAMA_CPP_WHEELS) \
	  --only-binary llama-cpp-python torch==2.13.0 -e '.[test]'
	/tmp/umi-lock-venv/bin/python -m pip install --quiet --no-deps bfcl-eval
	/tmp/umi-lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
	@echo "requirements.lock: $$(wc -l < requirements.lock) packages"

clean:
	rm -rf $(VENV) artifacts mlruns mlflow.db
