#!/usr/bin/env bash
# Runs in the Bento's image after its requirements are installed (bentofile.yaml: docker.setup_script).
# bfcl-eval ships BFCL's tool classes and docs; without --no-deps it would pull numpy 1.26 and ~30 API SDKs.
# The pin is requirements.lock's (tests/serve/test_serve_packaging.py checks they agree).
set -euo pipefail
uv pip install --no-deps "bfcl_eval==2026.3.23"
