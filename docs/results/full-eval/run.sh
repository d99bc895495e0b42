#!/usr/bin/env bash
# The full evaluation of the `make run` models (issue 10, item 10), one stage at a time, resumable across machines.
#
#   bash docs/results/full-eval/run.sh train [MODEL...]   # train what the evaluation needs, as make run does (below)
#   bash docs/results/full-eval/run.sh check              # are these weights on record (weights-*.sha256)?
#   bash docs/results/full-eval/run.sh 1a                 # a stage (see below); stop it at any time, run it again
#
# Every generation goes to the generation cache docs/results/full-eval/generations.sqlite as it is made (committed
# with the stage reports), so a new machine that retrains the same weights resumes where the last one stopped. The
# cache is keyed by each checkpoint's bytes (umi.vocabulary.content_digest). Weights of other bytes (a machine of
# another kind picks other kernels) resume only through a twin check (umi.eval.generation_cache): their first 64
# generations must equal the cache's, token for token, for the same requests; one difference and they are
# evaluated afresh. `check` says which weights on record these are, if any.
#
# `train` with no model names trains every model the evaluation uses (global, planner, caller, summarizer and the
# compute-matched control, single-matched; about 20 min on a fast 2-core machine); a stage needs only its own:
# 1b global; 1c global single-matched; 1a/2a global planner caller summarizer; 1d/2d/3d none (the backbone import).
set -euo pipefail
cd "$(dirname "$0")/../../.."
# Portable numerics, for training and evaluation alike. Kernels are chosen by the CPU: MKL's GEMMs and ATen's
# vectorised kernels run AVX-512 code where there is AVX-512, so the same commit and seed trained different bytes on
# two machines (2026-12-02 and -03). Pinned to their AVX2 code paths (MKL's conditional numerical reproducibility,
# ATen's capability), the same seed should give the same bytes on any x86 CPU with AVX2 and the same thread count
# (what MKL documents for that mode, and seen: on 2026-12-07 and -08, 2-core EPYCs with AVX2 only trained global,
# planner, caller and the control to the bytes of the AVX-512 machine's 2026-12-02 record; the summarizer's recipe
# changed in between, and -08 gave it -07's bytes). Measured on one machine:
# two pinned runs gave identical weights, the pins change the bytes (each of the two on its own does), at about
# 1.24x the training time (42 s vs 34 s on a 6k-token global stage). oneDNN is left alone: float32 training does not
# go through it (pinning it as well gave the same bytes). With ATen capped, the dtype rule resolves float32 for make
# run's own evaluation too (umi.inference.devices.cpu_has_native_bf16: torch's bf16 attention fails there otherwise).
export MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2
here=docs/results/full-eval
umi=.venv/bin/umi
runs=artifacts/runs

roles=(global planner caller summarizer single-matched)
hashes() {  # of the models trained here (those not trained are left out)
  for role in "${roles[@]}"; do
    for f in "$runs/$role/model"/*.safetensors; do
      [ -f "$f" ] && printf '%s  %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$role/$(basename "$f")"
    done
  done
  return 0
}

check() {  # per model: which dated record holds its bytes, if any
  local now hash name records new=0
  now=$(hashes)
  if [ -z "$now" ]; then
    echo "no trained models in $runs (the backbone needs none; the cache applies to its bytes as they are)"
    return
  fi
  while read -r hash name; do
    records=$(grep -lx "$hash  $name" "$here"/weights-2*.sha256 | xargs -r -n1 basename | tr '\n' ' ')
    if [ -n "$records" ]; then
      echo "$name: the bytes of $records(the cache applies as it is)"
    else
      echo "$name: bytes on no record (resumes from the cache only through a twin check: 64 identical generations)"
      new=1
    fi
  done <<<"$now"
  if [ "$new" = 1 ]; then
    echo "$now" >"$here/weights-new.sha256"
    echo "all hashes in $here/weights-new.sha256: commit it, renamed with the date, with the stage reports"
  fi
}

# float32 on every machine: stage 1a ran where the dtype rule resolves float32 (a CPU without native bf16); a machine
# with it would resolve bf16, and the stages would then describe two different numerics (and miss the cache, which
# is keyed by dtype)
common=(--profile full --max-prompt-tokens 1024 --dtype float32 --cache "$here/generations.sqlite" --no-tracking)
alpha=(--multi "alpha-umi=$runs/planner/model,$runs/caller/model,$runs/summarizer/model")
single=(--single "single-llm=$runs/global/model")
matched=(--single "single-matched=$runs/single-matched/model")
backbone=(--multi "backbone=artifacts/backbone,artifacts/backbone,artifacts/backbone")

stage="${1:?a stage: train | check | 1a | 1b | 1c | 1d | 1 | 2a | 2b | 2c | 2d | 3 | 3d | all | compute}"
if [ "$stage" = train ]; then
  shift
  make setup
  # the weights on record were trained with 2 threads (2-core machines); MKL's reproducible mode needs the same count
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" .venv/bin/python "$here/train.py" "${@:-${roles[@]}}"
  check
  exit 0
fi
[ "$stage" = check ] && { check; exit 0; }
check
# on any exit (a stage stopped half way included) the cache's write-ahead log is folded into the file, so that the one
# file committed holds every generation made
fold() {
  [ -f "$here/generations.sqlite" ] && .venv/bin/python -c \
    "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)')" "$here/generations.sqlite"
}
trap fold EXIT
case "$stage" in
  1a) $umi eval static "${common[@]}" "${alpha[@]}" --no-toolbench-ood --out "$here/stage-1a" ;;  # BFCL test split
  1b) $umi eval static "${common[@]}" "${single[@]}" --no-toolbench-ood --out "$here/stage-1b" ;;
  1c) $umi eval static "${common[@]}" "${matched[@]}" --no-toolbench-ood --out "$here/stage-1c" ;;
  1d) $umi eval static "${common[@]}" "${backbone[@]}" --no-toolbench-ood --out "$here/stage-1d" ;;
  1) $umi eval static "${common[@]}" "${alpha[@]}" "${single[@]}" "${matched[@]}" --no-toolbench-ood \
    --out "$here/stage-1" ;;  # 1a-1c in one report, paired with each other (from the cache once they are done)
  2a) $umi eval live "${common[@]}" "${alpha[@]}" --out "$here/stage-2a" ;;  # the 71 held-out live entries
  2b) $umi eval live "${common[@]}" "${single[@]}" --out "$here/stage-2b" ;;
  2c) $umi eval live "${common[@]}" "${matched[@]}" --out "$here/stage-2c" ;;
  2d) $umi eval live "${common[@]}" "${backbone[@]}" --out "$here/stage-2d" ;;
  3) $umi eval static "${common[@]}" "${alpha[@]}" "${single[@]}" "${matched[@]}" --out "$here/stage-3" ;;  # + OOD
  3d) $umi eval static "${common[@]}" "${backbone[@]}" --out "$here/stage-3d" ;;  # BFCL from 1d's cache, + OOD
  # the trained agents, static and live, paired with each other in one report (every generation from the cache once
  # 1-3 are done); the backbone's static rows are 1d/3d's. Not live: its planner never decides `conclusion`, so each
  # of the 271 turns runs to its 12-step cap, >= 6,504 generations (~7 h here, 3.8 s each); 2d computes it, resumable
  all) $umi eval all "${common[@]}" "${alpha[@]}" "${single[@]}" "${matched[@]}" --out "$here/full" ;;
  # what the record's generations cost (compute.py: each report's command, read again from a copy of the cache)
  compute) .venv/bin/python "$here/compute.py" "trained agents (all)" eval all "${common[@]}" "${alpha[@]}" \
    "${single[@]}" "${matched[@]}" -- "backbone (1d, 3d)" eval static "${common[@]}" "${backbone[@]}" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
