#!/usr/bin/env bash
# benchmarks/gpu_check.py on the lent GPU machine as one command (issue 30; docs/training.md, "The GPU check").
#
#   bash benchmarks/gpu_check.sh wheels       # here, with PyPI: the wheels that machine lacks -> .cache/gpu-check-wheels
#   bash benchmarks/gpu_check.sh wheels min   # the same without umi's ML stack (~9 MB instead of ~32 MB)
#   bash benchmarks/gpu_check.sh run          # there: install them, run the check, figures and log to $OUT
#
# That machine has Python 3.12 with torch (CUDA), transformers, accelerate, peft and pytest, and no network. It gets
# the working tree (tracked files: the committed sample and tokenizer in benchmarks/data/gpu_check/ travel with it)
# and the paths named in `carry`: here .cache/gpu-check-wheels (~32 MB), every package the check imports besides torch
# and numpy, at requirements.lock's versions (`gpu_check.py --wheel-list`); `wheels min` leaves out the ML stack
# (transformers, tokenizers, huggingface-hub, safetensors, accelerate, peft and what only they need), so that the
# machine's own versions run. `run`:
#   1. installs them into /tmp/gpu-check-site, and everything but the ML stack (transformers, tokenizers,
#      huggingface-hub, safetensors, accelerate, peft) into /tmp/gpu-check-site-min;
#   2. asks `gpu_check.py --check-imports` with the first; if umi cannot import against that machine's torch, with the
#      second (the machine's own transformers etc.); the log says which ran;
#   3. runs the check under `timeout` (GPU_CHECK_TIMEOUT, default 480 s), the JSON rewritten after every check.
# Extra arguments after `run` go to gpu_check.py (e.g. `run --skip serve`, `run --steps 10`).
# Files back in $OUT: gpu-check.json, gpu-check.log, imports.log, nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_CHECK_WHEELS:-.cache/gpu-check-wheels}
# The ML stack: left to the machine's own versions with `wheels min`, or when the locked ones do not import there.
STACK="transformers tokenizers huggingface_hub safetensors accelerate peft hf_xet httpx2 httpcore2"
STACK_WHEEL="^(${STACK// /|})-"                  # wheel file names spell them with _
STACK_REQ="^(${STACK// /|})==" STACK_REQ=${STACK_REQ//_/-}  # requirement lines with -

wheels() {
  local py=${PYTHON:-.venv/bin/python}
  mkdir -p "$WHEELS"
  "$py" benchmarks/gpu_check.py --wheel-list >"$WHEELS/requirements.txt" || exit 1
  if [ "${1:-}" = min ]; then
    grep -Ev "$STACK_REQ" "$WHEELS/requirements.txt" >"$WHEELS/requirements.min" && mv "$WHEELS/requirements.min" "$WHEELS/requirements.txt"
  fi
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$WHEELS" -r "$WHEELS/requirements.txt" || exit 1
  echo "$(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS: name it in the device tool's carry"
}

run() {
  local py=${PYTHON:-python3} out=${OUT:-/tmp/gpu-check-out} site=/tmp/gpu-check-site min=/tmp/gpu-check-site-min
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$WHEELS"/*.whl >>"$out/imports.log" 2>&1 || echo "pip install into $site failed" | tee -a "$out/imports.log"
    (cd "$WHEELS" && ls *.whl | grep -Ev "$STACK_WHEEL") | sed "s|^|$WHEELS/|" | xargs "$py" -m pip install -q --no-index \
      --no-deps --no-compile --no-cache-dir --upgrade --target "$min" >>"$out/imports.log" 2>&1 \
      || echo "pip install into $min failed" | tee -a "$out/imports.log"
  else
    echo "no wheels at $WHEELS (carry it): the machine's own packages only" | tee -a "$out/imports.log"
  fi
  local use=""
  for candidate in "$site" "$min" ""; do
    echo "== --check-imports with PYTHONPATH=$PWD${candidate:+:$candidate}" | tee -a "$out/imports.log"
    if PYTHONPATH="$PWD${candidate:+:$candidate}" "$py" benchmarks/gpu_check.py --check-imports >>"$out/imports.log" 2>&1
    then
      use=$candidate
      break
    fi
  done
  tail -n 40 "$out/imports.log"
  export PYTHONPATH="$PWD${use:+:$use}"
  echo "== running with PYTHONPATH=$PYTHONPATH"
  timeout "${GPU_CHECK_TIMEOUT:-480}" "$py" benchmarks/gpu_check.py --json "$out/gpu-check.json" "$@" 2>&1 \
    | tee "$out/gpu-check.log"
  local rc=${PIPESTATUS[0]}
  echo "== gpu_check.py exit status $rc (124: stopped by the time limit; the JSON holds the checks done by then)"
  return "$rc"
}

case "${1:-}" in
  wheels) shift; rm -f "$WHEELS"/*.whl "$WHEELS"/requirements.txt; wheels "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash benchmarks/gpu_check.sh wheels [min] | run [gpu_check.py arguments]" >&2; exit 2 ;;
esac
